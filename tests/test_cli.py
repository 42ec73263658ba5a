"""The ``mailslot`` command through ``cli.main``: check-config, user, serve and the quick start."""

from __future__ import annotations

import asyncio
import datetime
import io
import re
import socket
import ssl
import stat
import sys
import threading
import types
from collections.abc import Iterator
from email.parser import BytesParser
from pathlib import Path

import pytest
from cryptography import x509
from tests.support.server import free_port
from tests.support.tls import make_tls_files

from mailslot import __version__, quickstart
from mailslot.auth.base import AuthenticationFailed
from mailslot.auth.passwdfile import PasswdFileAuthenticator
from mailslot.cli import EX_CONFIG, EX_NOUSER, EX_UNAVAILABLE, main
from mailslot.config import Config

CONFIG = """\
[[listener]]
address = "127.0.0.1"
port = 1110
tls = "starttls"

[[listener]]
address = "127.0.0.1"
port = 1995
tls = "implicit"

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[auth]
passwd_file = "users"

[server]
# The tests run as root, here and in CI; a root-started server needs a user or a reason.
run_as_root = "the test suite runs as root"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "users").write_text("")
    # A real chain and key: check-config and serve load them as the server would.
    files = make_tls_files(tmp_path / "tls")
    files.certificate.rename(tmp_path / "cert.pem")
    files.private_key.rename(tmp_path / "key.pem")
    path = tmp_path / "mailslot.toml"
    path.write_text(CONFIG)
    return path


def feed(monkeypatch: pytest.MonkeyPatch, text: str) -> io.StringIO:
    stdin = io.StringIO(text)  # isatty() is False, as for a pipe
    monkeypatch.setattr(sys, "stdin", stdin)
    return stdin


def authenticates(passwd_file: Path, name: str, password: str) -> bool:
    async def attempt() -> bool:
        try:
            await PasswdFileAuthenticator(passwd_file).authenticate(name, password)
        except AuthenticationFailed:
            return False
        return True

    return asyncio.run(attempt())


class FakeRunner:
    """Stands in for mailslot.server.runner: records the config instead of serving it."""

    def __init__(self) -> None:
        self.configs: list[Config] = []

    def run(self, config: Config) -> int:
        self.configs.append(config)
        return 0


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    fake = FakeRunner()
    module = types.ModuleType("mailslot.server.runner")
    module.run = fake.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mailslot.server.runner", module)
    return fake


# -- general ---------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mailslot {__version__}"


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        ["check-config"],
        ["user"],
        ["user", "add"],
        ["user", "passwd"],
        ["user", "delete"],
        ["user", "list"],
        ["deliver"],  # registered by mailslot.delivery.command through cli.add_deliver
    ],
)
def test_every_command_has_help_with_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"mailslot {' '.join(command)}" in out


def test_serve_help_says_what_the_signals_do(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "until SIGTERM or SIGINT" in out
    assert (
        "SIGHUP, or a change of the files, reloads the TLS certificates and keys without "
        "dropping sessions" in out
    )


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# -- check-config ----------------------------------------------------------------------------


def test_check_config_ok(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert out == (
        f"OK: {config_file}: 2 listeners: pop3 on 127.0.0.1:1110 (tls starttls); "
        "pop3 on 127.0.0.1:1995 (tls implicit)\n"
    )


def test_check_config_reports_every_problem(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file.write_text(
        CONFIG.replace('tls = "implicit"', 'tls = "ssl"') + "[limits]\nidle_timeout = 30\n"
    )
    assert main(["check-config", "--config", str(config_file)]) == EX_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith(f"{config_file}:9: listener[1].tls: must be one of")
    assert lines[1].startswith(f"{config_file}:22: limits.idle_timeout: must be at least 600")
    assert lines[2] == "2 problems in the configuration"


def test_check_config_syntax_error(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file.write_text(CONFIG + "[limits\n")
    assert main(["check-config", "--config", str(config_file)]) == EX_CONFIG
    assert capsys.readouterr().err.startswith(f"{config_file}:21: TOML syntax error")


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "nope.toml")]) == EX_CONFIG
    assert "cannot read the file" in capsys.readouterr().err


# -- user ------------------------------------------------------------------------------------


def test_user_add_reads_password_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users"
    feed(monkeypatch, " s3cret with spaces \n")
    assert main(["user", "add", "--passwd-file", str(users), "alice"]) == 0
    assert authenticates(users, "alice", " s3cret with spaces ")
    assert not authenticates(users, "alice", "s3cret with spaces")
    assert "{ARGON2ID}" in users.read_text()


def test_user_add_with_scheme_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    users = tmp_path / "users"
    feed(monkeypatch, "pw\n")
    args = ["user", "add", "--passwd-file", str(users), "--scheme", "sha512-crypt"]
    assert main([*args, "--home", "/home/bob", "bob"]) == 0
    line = users.read_text().strip()
    assert line.startswith("bob:{SHA512-CRYPT}")
    assert line.endswith(":/home/bob")


def test_user_add_via_config_creates_the_passwd_file(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config_file.parent / "users").unlink()
    feed(monkeypatch, "pw\n")
    assert main(["user", "add", "--config", str(config_file), "carol"]) == 0
    assert authenticates(config_file.parent / "users", "carol", "pw")


def test_user_add_existing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users"
    feed(monkeypatch, "one\n")
    assert main(["user", "add", "--passwd-file", str(users), "alice"]) == 0
    capsys.readouterr()
    feed(monkeypatch, "two\n")
    assert main(["user", "add", "--passwd-file", str(users), "alice"]) == 1
    assert capsys.readouterr().err == "mailslot: user 'alice' already exists\n"
    assert authenticates(users, "alice", "one")


def test_invalid_name_is_refused_before_reading_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin = feed(monkeypatch, "pw\n")
    assert main(["user", "add", "--passwd-file", str(tmp_path / "users"), "../root"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mailslot: invalid user name")
    assert err.count("\n") == 1
    assert stdin.read() == "pw\n"
    assert not (tmp_path / "users").exists()


@pytest.mark.parametrize("text", ["", "\n"])
def test_missing_or_empty_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    feed(monkeypatch, text)
    assert main(["user", "add", "--passwd-file", str(tmp_path / "users"), "alice"]) == 1
    assert "password" in capsys.readouterr().err
    assert not (tmp_path / "users").exists()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_asks_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    answers = iter(["typed", "typed"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    users = tmp_path / "users"
    assert main(["user", "add", "--passwd-file", str(users), "alice"]) == 0
    assert authenticates(users, "alice", "typed")


def test_terminal_mismatch_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    answers = iter(["typed", "tpyed"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["user", "add", "--passwd-file", str(tmp_path / "users"), "alice"]) == 1
    assert "do not match" in capsys.readouterr().err


def test_user_passwd_list_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = str(tmp_path / "users")
    for name in ("alice", "bob"):
        feed(monkeypatch, "old\n")
        assert main(["user", "add", "--passwd-file", users, name]) == 0
    feed(monkeypatch, "new\n")
    assert main(["user", "passwd", "--passwd-file", users, "alice"]) == 0
    assert authenticates(Path(users), "alice", "new")
    assert not authenticates(Path(users), "alice", "old")
    capsys.readouterr()
    assert main(["user", "list", "--passwd-file", users]) == 0
    assert capsys.readouterr().out == "alice\nbob\n"
    assert main(["user", "delete", "--passwd-file", users, "alice"]) == 0
    assert main(["user", "list", "--passwd-file", users]) == 0
    assert capsys.readouterr().out == "bob\n"


def test_unknown_user_is_ex_nouser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = str(tmp_path / "users")
    feed(monkeypatch, "pw\n")
    assert main(["user", "passwd", "--passwd-file", users, "ghost"]) == EX_NOUSER
    assert main(["user", "delete", "--passwd-file", users, "ghost"]) == EX_NOUSER
    assert capsys.readouterr().err == "mailslot: no user 'ghost'\n" * 2


def test_user_with_broken_config_is_ex_config(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file.write_text(CONFIG + "bogus = 1\n")
    assert main(["user", "list", "--config", str(config_file)]) == EX_CONFIG
    assert "bogus" in capsys.readouterr().err


def test_user_requires_a_database(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["user", "list"])
    assert info.value.code == 2
    assert "--config" in capsys.readouterr().err


# -- serve -----------------------------------------------------------------------------------


def test_serve_runs_the_loaded_config(config_file: Path, runner: FakeRunner) -> None:
    assert main(["serve", "--config", str(config_file)]) == 0
    assert [c.source for c in runner.configs] == [config_file]
    assert [lst.port for lst in runner.configs[0].listeners] == [1110, 1995]


def test_serve_with_bad_config_does_not_run(
    config_file: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file.write_text(CONFIG.replace("port = 1110", "port = 0"))
    assert main(["serve", "--config", str(config_file)]) == EX_CONFIG
    assert runner.configs == []
    assert f"{config_file}:3: listener[0].port" in capsys.readouterr().err


def test_serve_config_and_data_dir_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--config", "a.toml", "--data-dir", str(tmp_path)])
    assert info.value.code == 2


# -- quick start -----------------------------------------------------------------------------


@pytest.fixture
def ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    # 1110/1995 may be taken on a shared test machine; the quick start writes these instead.
    stls, pop3s = free_port(), free_port()
    monkeypatch.setattr(quickstart, "STLS_PORT", stls)
    monkeypatch.setattr(quickstart, "POP3S_PORT", pop3s)
    yield stls, pop3s


def _handshake(data: Path, server_hostname: str) -> x509.Certificate:
    """A real TLS handshake: server with the quick start's chain, client trusting only ca.pem."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(data / "fullchain.pem", data / "privkey.pem")
    client_ctx = ssl.create_default_context(cafile=str(data / "ca.pem"))
    server_sock, client_sock = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                tls.sendall(b"+OK\r\n")
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            assert tls.recv(5) == b"+OK\r\n"
            der = tls.getpeercert(binary_form=True)
    finally:
        thread.join()
    assert errors == []
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_quick_start_first_and_second_run(
    tmp_path: Path,
    runner: FakeRunner,
    ports: tuple[int, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    stls, pop3s = ports
    assert main(["serve", "--data-dir", str(data)]) == 0
    out, err = capsys.readouterr()
    # Its certificates pass the checks, and its own CA (which clients are told to trust)
    # counts as trusted: no warning at all.
    assert "warning" not in err, err

    # The password is printed once, with ready-to-paste client commands.
    password = out.split("has the password: ", 1)[1].split()[0]
    assert len(password) >= 16
    assert f"curl --cacert {data}/ca.pem pop3s://127.0.0.1:{pop3s}/ -u demo:{password}" in out
    assert (
        f"curl --cacert {data}/ca.pem --ssl-reqd pop3://127.0.0.1:{stls}/1 -u demo:{password}"
        in out
    )
    doctor = f"mailslot doctor 127.0.0.1 --port {pop3s} --stls-port {stls} --cafile {data}/ca.pem"
    assert doctor in out

    # The runner got the written config, loaded and validated.
    (config,) = runner.configs
    assert config.source == data / "mailslot.toml"
    assert [(lst.address, lst.port, lst.tls) for lst in config.listeners] == [
        ("127.0.0.1", stls, "starttls"),
        ("127.0.0.1", pop3s, "implicit"),
    ]
    assert config.tls.certificate == data / "fullchain.pem"
    assert config.store.maildir == f"{data}/mail/{{user}}/Maildir"

    # Keys are private; the certificate verifies against the CA for every local name.
    for key in ("ca-key.pem", "privkey.pem", "users"):
        assert stat.S_IMODE((data / key).stat().st_mode) == 0o600, key
    for name in ("localhost", "127.0.0.1", "::1"):
        leaf = _handshake(data, name)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc < datetime.timedelta(days=366)
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage

    # demo logs in with the printed password, and only with it.
    assert authenticates(data / "users", "demo", password)
    assert not authenticates(data / "users", "demo", password + "x")

    # The welcome message is in demo's Maildir with proper headers and LF line ends.
    (welcome,) = (data / "mail" / "demo" / "Maildir" / "new").iterdir()
    raw = welcome.read_bytes()
    assert b"\r\n" not in raw
    headers = BytesParser().parsebytes(raw, headersonly=True)
    for header in ("Date", "From", "To", "Subject", "Message-ID"):
        assert headers[header], header
    assert "demo@localhost" in headers["To"]

    # Second run: everything reused, no password, a hint how to reset it.
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    assert main(["serve", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert password not in out
    assert "has the password" not in out
    assert f"mailslot user passwd --config {data}/mailslot.toml demo" in out
    after = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    assert after == before
    assert len(list((data / "mail" / "demo" / "Maildir" / "new").iterdir())) == 1
    assert runner.configs[1] == runner.configs[0]


def test_quick_start_issues_an_expiring_leaf_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    quickstart.ensure_certificates(data)
    ca, first = (data / "ca.pem").read_bytes(), (data / "fullchain.pem").read_bytes()
    quickstart.ensure_certificates(data)
    assert (data / "fullchain.pem").read_bytes() == first  # far from expiry: kept
    leaf = x509.load_pem_x509_certificate(first)
    later = leaf.not_valid_after_utc - quickstart.RENEW_BEFORE + datetime.timedelta(days=1)

    class _Later(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> _Later:
            return cls.fromtimestamp(later.timestamp(), tz)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quickstart.datetime, "datetime", _Later)
        quickstart.ensure_certificates(data)
    renewed = x509.load_pem_x509_certificate((data / "fullchain.pem").read_bytes())
    assert renewed.serial_number != leaf.serial_number
    assert renewed.not_valid_after_utc > leaf.not_valid_after_utc
    assert (data / "ca.pem").read_bytes() == ca  # the CA clients were given stays


def test_quick_start_uses_environment_data_dir(
    tmp_path: Path,
    runner: FakeRunner,
    ports: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MAILSLOT_DATA_DIR", str(tmp_path / "env-data"))
    assert main(["serve"]) == 0
    assert (tmp_path / "env-data" / "mailslot.toml").is_file()
    assert runner.configs[0].source == tmp_path / "env-data" / "mailslot.toml"


def test_quick_start_remakes_a_deleted_certificate_of_an_existing_configuration(
    tmp_path: Path, runner: FakeRunner, ports: tuple[int, int]
) -> None:
    data = tmp_path / "data"
    assert main(["serve", "--data-dir", str(data)]) == 0
    (data / "fullchain.pem").unlink()
    (data / "privkey.pem").unlink()
    assert main(["serve", "--data-dir", str(data)]) == 0
    _handshake(data, "localhost")


def test_quick_start_completes_an_interrupted_first_run(
    tmp_path: Path, runner: FakeRunner, ports: tuple[int, int]
) -> None:
    data = tmp_path / "data"
    quickstart.prepare(data)
    (data / "fullchain.pem").unlink()
    (data / "mailslot.toml").unlink()
    ca_before = (data / "ca.pem").read_bytes()
    assert main(["serve", "--data-dir", str(data)]) == 0
    assert (data / "ca.pem").read_bytes() == ca_before
    _handshake(data, "localhost")


def test_quick_start_takes_a_free_port_when_a_default_one_is_busy(
    tmp_path: Path,
    runner: FakeRunner,
    ports: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setattr(quickstart, "POP3S_PORT", port)
        assert main(["serve", "--data-dir", str(tmp_path / "data")]) == 0
    captured = capsys.readouterr()
    (config,) = runner.configs
    (listener,) = [lst for lst in config.listeners if lst.tls == "implicit"]
    assert listener.port != port
    assert f"port {port} is taken; the quick start uses port {listener.port} instead" in (
        captured.out
    )
    assert f"pop3s://127.0.0.1:{listener.port}/" in captured.out
    assert "has the password: " in captured.out


def test_quick_start_says_when_a_configured_port_is_busy_before_printing_anything(
    tmp_path: Path,
    runner: FakeRunner,
    ports: tuple[int, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    _, pop3s = ports
    assert main(["serve", "--data-dir", str(data)]) == 0
    capsys.readouterr()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", pop3s))
        busy.listen()
        assert main(["serve", "--data-dir", str(data)]) == EX_UNAVAILABLE
    captured = capsys.readouterr()
    assert len(runner.configs) == 1
    assert captured.out == ""
    found = re.search(
        rf"127\.0\.0\.1 port {pop3s} is already in use .*port (\d+) is free", captured.err
    )
    assert found is not None, captured.err
    with socket.socket() as probe:  # the port offered is free indeed
        probe.bind(("127.0.0.1", int(found.group(1))))
    assert f"change the port in {data / 'mailslot.toml'}" in captured.err


def test_user_refuses_a_dovecot_backend(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With backend = "dovecot" the users are Dovecot's: ``mailslot user`` must not edit a
    passwd-file that the server does not read."""
    text = config_file.read_text().replace("[auth]\n", '[auth]\nbackend = "dovecot"\n')
    config_file.write_text(text)
    assert main(["user", "list", "--config", str(config_file)]) == EX_CONFIG
    assert "Dovecot" in capsys.readouterr().err
