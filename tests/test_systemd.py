"""mailslot.systemd: sd_notify datagrams, sockets passed by systemd, the units it writes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.support.programs import in_ci

from mailslot import quickstart, systemd
from mailslot.cli import main
from mailslot.config import Config, load

CONFIG = """\
[[listener]]
address = "0.0.0.0"
port = 995
tls = "implicit"

[[listener]]
address = "::"
port = 110
tls = "starttls"

[[listener]]
protocol = "lmtp"
path = "/run/mailslot/lmtp.sock"

[tls]
certificate = "fullchain.pem"
private_key = "privkey.pem"

[auth]
passwd_file = "users"

[store]
maildir = "/var/vmail/{domain}/{localpart}/Maildir"

[server]
run_as_root = "a test of the unit files"
"""


@pytest.fixture
def notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(10)
    return sock


def test_notify_sends_one_datagram_to_the_socket(notify_socket: socket.socket) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.getsockname()}
    assert systemd.ready(env)
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving"
    assert systemd.reloading(env)
    reloading = notify_socket.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=") and int(reloading[1].split("=")[1]) > 0
    assert systemd.stopping(env)
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"mailslot-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert systemd.ready({"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096).startswith(b"READY=1")


@pytest.mark.parametrize("value", [None, "", "relative/path", "/nonexistent/socket"])
def test_notify_without_systemd_does_nothing(value: str | None) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert not systemd.ready(env)


_CHILD = textwrap.dedent(
    """
    import os, sys
    from mailslot import quickstart, systemd
    socks = systemd.listen_fds()
    print(len(socks), [s.getsockname()[1] for s in socks], os.environ.get("LISTEN_FDS"))
    """
)


def test_listen_fds_takes_the_sockets_passed_at_fd_3(tmp_path: Path) -> None:
    first = socket.create_server(("127.0.0.1", 0))
    second = socket.create_server(("127.0.0.1", 0))
    ports = [first.getsockname()[1], second.getsockname()[1]]

    def at_3_and_4() -> None:  # in the child, before exec: what systemd does
        os.dup2(first.fileno(), 3)
        os.dup2(second.fileno(), 4)

    # LISTEN_PID must be the pid of the process that reads it: the shell's, kept by exec.
    script = f'LISTEN_PID=$$ LISTEN_FDS=2 exec "{sys.executable}" -c "$0"'
    result = subprocess.run(
        ["sh", "-c", script, _CHILD],
        preexec_fn=at_3_and_4,  # dup2 in the child, between fork and exec, is the point
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        close_fds=False,
    )
    first.close()
    second.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(None, 1) == ["2", f"{ports} None\n"]


def test_listen_fds_ignores_sockets_meant_for_another_process() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2"}
    assert systemd.listen_fds(env) == []
    assert env == {}  # taken away all the same, so that no child reads them


def _units(
    tmp_path: Path, *options: str, executable: str = "/usr/local/bin/mailslot"
) -> dict[str, str]:
    config = tmp_path / "mailslot.toml"
    config.write_text(CONFIG)
    (tmp_path / "users").write_text("")
    quickstart.ensure_certificates(tmp_path)
    directory = tmp_path / "units"
    assert (
        main(
            [
                "systemd-unit",
                "--config",
                str(config),
                "--install",
                "--directory",
                str(directory),
                "--executable",
                executable,
                *options,
            ]
        )
        == 0
    )
    return {path.name: path.read_text() for path in directory.iterdir()}


def test_service_unit_is_hardened_and_writes_only_the_store_and_the_lmtp_socket(
    tmp_path: Path,
) -> None:
    units = _units(tmp_path)
    assert set(units) == {"mailslot.service"}
    service = units["mailslot.service"].splitlines()
    assert (
        f"ExecStart=/usr/local/bin/mailslot serve --config {tmp_path / 'mailslot.toml'}" in service
    )
    assert "Type=notify" in service
    assert "ProtectSystem=strict" in service
    assert "ReadWritePaths=-/run/mailslot -/var/vmail" in service
    assert "NoNewPrivileges=yes" in service
    assert "Sockets=mailslot.socket" not in service


def test_socket_unit_listens_where_the_pop3_listeners_do(tmp_path: Path) -> None:
    units = _units(tmp_path, "--socket")
    socket_unit = units["mailslot.socket"].splitlines()
    assert [line for line in socket_unit if line.startswith("ListenStream=")] == [
        "ListenStream=0.0.0.0:995",
        "ListenStream=[::]:110",
    ]
    assert "Sockets=mailslot.socket" in units["mailslot.service"].splitlines()


def test_home_maildirs_keep_home_writable(tmp_path: Path) -> None:
    config = load_config(tmp_path, CONFIG.replace("/var/vmail/{domain}/{localpart}", "~"))
    service = systemd.service_unit(config, tmp_path / "m.toml", ["/usr/bin/mailslot"])
    assert "ProtectHome=no" in service.splitlines()
    assert "ReadWritePaths=/home" in service.splitlines()


def test_a_program_path_with_spaces_is_quoted(tmp_path: Path) -> None:
    config = load_config(tmp_path, CONFIG)
    service = systemd.service_unit(
        config, tmp_path / "my config.toml", ["/opt/my venv/bin/python", "-m", "mailslot"]
    )
    start = f'ExecStart="/opt/my venv/bin/python" -m mailslot serve --config "{tmp_path}/my'
    assert f'{start} config.toml"' in service.splitlines()


def load_config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "mailslot.toml"
    path.write_text(text)
    return load(path, check_files=False)


def test_systemd_analyze_verifies_both_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is not installed (Debian's systemd package)"
        if in_ci():
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    # ExecStart's program must exist for verify: one that does stands in for mailslot.
    units = _units(tmp_path, "--socket", executable=sys.executable)
    paths = [str(tmp_path / "units" / name) for name in units]
    result = subprocess.run(
        [analyze, "verify", *paths], capture_output=True, text=True, timeout=120, check=False
    )
    # Any complaint about our units (an unknown key, a bad value) fails; lines about other
    # units of this machine do not concern them.
    ours = [line for line in result.stderr.splitlines() if "mailslot." in line]
    assert result.returncode == 0 and ours == [], result.stderr


def test_acme_keeps_its_state_and_the_certificate_directories_writable(tmp_path: Path) -> None:
    text = CONFIG + '\n[acme]\nenabled = true\nstate_directory = "/var/lib/mailslot/acme"\n'
    config = load_config(tmp_path, text)
    service = systemd.service_unit(config, tmp_path / "m.toml", ["/usr/bin/mailslot"])
    line = next(x for x in service.splitlines() if x.startswith("ReadWritePaths=-"))
    written = set(line.removeprefix("ReadWritePaths=").split())
    assert "-/var/lib/mailslot/acme" in written
    assert f"-{config.tls.certificate.parent}" in written  # type: ignore[union-attr]


def test_the_admin_socket_directory_is_made_and_writable(tmp_path: Path) -> None:
    service = _units(tmp_path)["mailslot.service"].splitlines()
    # The default admin socket, /run/mailslot/admin.sock: /run is read-only otherwise.
    assert "RuntimeDirectory=mailslot" in service
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    (elsewhere / "mailslot.toml").write_text(
        CONFIG.replace('path = "/run/mailslot/lmtp.sock"', 'path = "/var/spool/lmtp.sock"')
        + '\n[admin]\nsocket = "/var/lib/mailslot/admin.sock"\n'
    )
    (elsewhere / "users").write_text("")
    quickstart.ensure_certificates(elsewhere)
    config = load(elsewhere / "mailslot.toml")
    unit = systemd.service_unit(config, elsewhere / "mailslot.toml", ["/usr/bin/mailslot"])
    assert "RuntimeDirectory=mailslot" not in unit.splitlines()
    assert "-/var/lib/mailslot" in next(
        line for line in unit.splitlines() if line.startswith("ReadWritePaths=")
    )
