"""docs/production.md is tested: what it tells an administrator to run or write must work.

- every ``mailslot`` command in it parses with the real command line, and every other command
  names a program this guide means (a typo in a subcommand or an option fails here);
- every TOML block, put into the shipped sample configuration in place of the table it names
  (paths pointed at test files, tests/support/production.py), passes ``mailslot check-config``;
- the nftables ruleset passes ``nft -c`` (checked, never loaded);
- the hardening table names exactly the options ``mailslot systemd-unit`` writes;
- Postfix with the guide's ``postconf`` settings delivers into the sample's LMTP socket and
  Maildir template;
- the certbot deploy hook, run as certbot would after a renewal, makes a running server serve
  the renewed certificate at once, and refuses (and reloads nothing) when the renewal fails
  the certificate checks.  ``systemctl reload mailslot.service`` is stood in for by what the
  unit's ``ExecReload`` runs, ``kill -HUP`` of the main process (checked against the unit).
"""

from __future__ import annotations

import grp
import os
import re
import shlex
import smtplib
import socket
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
from tests.support.dropped import shared_directory
from tests.support.production import localise
from tests.support.programs import require_program
from tests.support.server import Listener, MailslotServer, ServerFactory, free_port
from tests.support.tls import TlsFiles
from tests.tls.certmaker import Issued, Pki, pki, write

from mailslot import systemd
from mailslot.cli import build_parser, sample_config
from mailslot.config import loads

ROOT = Path(__file__).parents[1]
GUIDE = ROOT / "docs" / "production.md"
POLL_DEADLINE = 30.0  # polling the server for the reloaded certificate, not a threshold
# The programs the guide runs besides mailslot (and pip of the virtualenv it made).
PROGRAMS = {
    "python3",
    "pip",
    "useradd",
    "usermod",
    "install",
    "chown",
    "chmod",
    "certbot",
    "ufw",
    "postconf",
    "systemctl",
    "journalctl",
    "sh",
}
OPERATORS = {"&&", "||", "|", ";"}


def text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text(), re.DOTALL | re.MULTILINE)


def commands() -> list[list[str]]:
    """Each simple command of the guide's sh blocks (the deploy hook's lines included)."""
    found = []
    for block in blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            words: list[str] = []
            redirect = False
            for word in shlex.split(line, comments=True):
                if redirect:  # the file after ">"
                    redirect = False
                elif word == ">":
                    redirect = True
                elif word in OPERATORS:
                    found.append(words)
                    words = []
                else:
                    words.append(word)
            if words and words[0] not in ("set",):
                found.append(words)
    return [argv for argv in found if argv]


def test_the_guide_runs_only_mailslot_and_known_programs() -> None:
    names = {Path(argv[0]).name for argv in commands()}
    assert "mailslot" in names
    assert names - {"mailslot"} <= PROGRAMS, names - {"mailslot"} - PROGRAMS


def test_every_mailslot_command_of_the_guide_parses() -> None:
    inline = re.findall(r"`((?:/opt/[\w.-]+/bin/)?mailslot [^`]*--config[^`]*)`", text())
    runs = [argv for argv in commands() if Path(argv[0]).name == "mailslot"]
    runs += [shlex.split(command) for command in inline]
    assert len(runs) >= 8
    parser = build_parser()
    for argv in runs:
        try:
            parser.parse_args(argv[1:])
        except SystemExit as exc:
            pytest.fail(f"{shlex.join(argv)} does not parse (exit {exc.code})")


def test_the_unit_the_guide_installs_is_the_one_it_reloads_and_stops() -> None:
    guide = text()
    for argv in commands():
        if Path(argv[0]).name == "systemctl" and len(argv) > 2:
            assert argv[-1] in ("mailslot.service", "postfix"), argv
    assert "systemctl reload mailslot.service" in guide


def _merge(sample: str, fragment: str) -> str:
    """``sample`` with each table ``fragment`` has replaced by the fragment's."""
    names = set(re.findall(r"^\[\[?([\w.]+)\]\]?\s*$", fragment, re.MULTILINE))
    kept, skipping = [], False
    for line in sample.splitlines(keepends=True):
        if header := re.match(r"^\[\[?([\w.]+)\]\]?\s*$", line):
            skipping = header[1] in names
        if not skipping:
            kept.append(line)
    return "".join(kept) + "\n" + fragment


def test_every_toml_block_passes_check_config_in_the_sample(tmp_path: Path) -> None:
    fragments = blocks("toml")
    assert fragments
    with shared_directory() if os.geteuid() == 0 else nullcontext(tmp_path) as directory:
        here = localise(directory)
        for fragment in fragments:
            here.config_path.write_text(here.apply(_merge(sample_config(), fragment)))
            check = [sys.executable, "-m", "mailslot", "check-config", "--config"]
            result = subprocess.run(
                [*check, str(here.config_path)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, fragment + result.stderr
            assert result.stdout.startswith("OK: "), result.stdout


def test_the_nftables_ruleset_passes_nft_check(tmp_path: Path) -> None:
    nft = require_program("nft")
    (ruleset,) = blocks("nft")
    path = tmp_path / "nftables.conf"
    path.write_text(ruleset)
    check = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert re.search(r"tcp dport \{ 110, 995 \} accept", ruleset)


def test_the_hardening_table_lists_every_option_of_the_unit() -> None:
    config = loads(sample_config(), Path("/etc/mailslot/mailslot.toml"), check_files=False)
    unit = systemd.service_unit(
        config, Path("/etc/mailslot/mailslot.toml"), ["/opt/mailslot/bin/mailslot"]
    )
    section = text().split("### Hardening options of the unit", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(\w+)=", section))
    template = systemd._HARDENING.format(read_write="")
    hardening = set(re.findall(r"^(\w+)=", template, re.MULTILINE))
    written = set(re.findall(r"^(\w+)=", unit, re.MULTILINE))
    assert (
        hardening | {"ReadWritePaths", "ProtectHome", "LimitNOFILE", "RuntimeDirectory"} == listed
    )
    assert listed <= written
    # What the table says ReadWritePaths are, for the sample's configuration.
    assert "ReadWritePaths=-/run/mailslot -/var/spool/postfix/private -/var/vmail\n" in unit
    assert "RuntimeDirectory=mailslot\n" in unit
    assert "ProtectHome=yes\n" in unit


# -- the certbot deploy hook -------------------------------------------------------------------


def _hook() -> str:
    (hook,) = [block for block in blocks("sh") if block.startswith("#!/bin/sh\n")]
    return hook


def _served_serial(address: tuple[str, int], ca: Pki) -> int:
    from cryptography import x509

    with (
        socket.create_connection(address, timeout=30) as raw,
        ca.client().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"QUIT\r\n")
        return x509.load_der_x509_certificate(der).serial_number


def _renew(live: Path, ca: Pki, key: bytes | None = None) -> Issued:
    """Write a new chain (and its key, or ``key``) as new files switched into place."""
    leaf = ca.leaf("localhost")
    new = live / "new"
    write(new, leaf, ca.intermediate, key=key)
    for name in ("fullchain.pem", "privkey.pem"):
        os.replace(new / name, live / name)
    return leaf


def test_the_deploy_hook_reloads_a_renewed_certificate_at_once(
    mailslot_factory: ServerFactory, tmp_path: Path
) -> None:
    ca = pki(tmp_path / "pki")
    live = tmp_path / "live"
    first = ca.leaf("localhost")
    certificate, private_key = write(live, first, ca.intermediate)
    server = mailslot_factory(
        start=False,
        tls=TlsFiles(ca.ca_pem, certificate, private_key),
        listeners=(Listener("implicit"),),
        extra_sections={"server": {"workers": 2}},
    )
    # No automatic reload: whatever reloads is the hook.
    config = server.config_path.read_text()
    server.config_path.write_text(config.replace("[tls]\n", "[tls]\nreload_check_interval = 0\n"))
    server.start()
    assert server.process is not None
    unit = systemd.service_unit(loads(config, server.config_path), server.config_path, ["m"])
    assert "ExecReload=/bin/kill -HUP $MAINPID\n" in unit

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl.calls"
    (bin_dir / "systemctl").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        '[ "$*" = "reload mailslot.service" ] || exit 1\n'
        f"exec /bin/kill -HUP {server.process.pid}\n"
    )
    (bin_dir / "mailslot").write_text(f'#!/bin/sh\nexec {sys.executable} -m mailslot "$@"\n')
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    hook = tmp_path / "mailslot-deploy-hook"
    hook.write_text(
        _hook()
        .replace("/opt/mailslot/bin/mailslot", str(bin_dir / "mailslot"))
        .replace("/etc/mailslot/mailslot.toml", str(server.config_path))
    )
    hook.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env["RENEWED_LINEAGE"] = str(live)  # what certbot sets for a deploy hook

    def run_hook() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(hook)], env=env, capture_output=True, text=True, check=False)

    address = server.implicit
    assert _served_serial(address, ca) == first.serial
    # A renewal that fails the checks (the new chain with the old key): no reload.
    _renew(live, ca, key=first.key_pem())
    refused = run_hook()
    assert refused.returncode != 0
    assert "does not belong to the certificate" in refused.stderr
    assert not calls.exists()
    # A good renewal: checked, reloaded, served to the next connection.
    renewed = _renew(live, ca)
    assert _served_serial(address, ca) == first.serial  # nothing reloads by itself here
    done = run_hook()
    assert done.returncode == 0, done.stderr
    assert calls.read_text() == "reload mailslot.service\n"
    deadline = time.monotonic() + POLL_DEADLINE
    while _served_serial(address, ca) != renewed.serial:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert server.running


# -- Postfix -----------------------------------------------------------------------------------


def _postconf_settings() -> dict[str, str]:
    (postconf,) = [argv for argv in commands() if argv[0] == "postconf"]
    assert postconf[1] == "-e"
    return dict(setting.split(" = ", 1) for setting in postconf[2:])


@pytest.mark.slow
def test_postfix_configured_as_the_guide_says_delivers_into_the_sample(tmp_path: Path) -> None:
    """The guide's main.cf settings in a private Postfix (tests/delivery/postfix.py), the
    sample configuration's LMTP socket in that Postfix's queue directory: a message sent to
    Postfix over SMTP lands in the recipient's Maildir under the sample's template."""
    from tests.delivery.postfix import Postfix

    require_program("postfix")
    if os.geteuid() != 0:
        pytest.skip("Postfix must be started as root (it drops to mail_owner = postfix)")
    settings = _postconf_settings()
    assert settings == {
        "virtual_mailbox_domains": "example.org",
        "virtual_transport": "lmtp:unix:private/mailslot-lmtp",
    }
    postfix = Postfix(free_port(), settings)
    server = None
    try:
        postfix.start()  # makes queue/private, where the sample's socket goes
        with shared_directory() as directory:
            here = localise(directory)
            pop3s, pop3 = free_port(), free_port()
            text = (
                sample_config()
                .replace("/var/spool/postfix/", f"{postfix.directory / 'queue'}/")
                .replace('address = "0.0.0.0"', 'address = "127.0.0.1"')
                .replace('address = "::"', 'address = "::1"')
                .replace("port = 995", f"port = {pop3s}")
                .replace("port = 110", f"port = {pop3}")
            )
            server = MailslotServer(
                directory / "harness",
                here.tls_files,
                listeners=(Listener("implicit", port=pop3s), Listener("starttls", port=pop3)),
            )
            server.config_path.write_text(here.apply(text))
            server.start()
            socket_path = postfix.directory / "queue" / "private" / "mailslot-lmtp"
            assert socket_path.is_socket()
            # What `usermod -aG mailslot postfix` gives Postfix: the socket's group.
            os.chown(socket_path, -1, grp.getgrnam("postfix").gr_gid)
            with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=60) as smtp:
                smtp.sendmail(
                    "bob@example.net",
                    ["carol@example.org"],
                    b"From: bob@example.net\r\nTo: carol@example.org\r\n"
                    b"Subject: guide\r\n\r\nhi\r\n",
                )
            new = here.mail_root / "example.org" / "carol" / "Maildir" / "new"
            postfix.wait_for(lambda: new.is_dir() and any(new.iterdir()), "carol's message")
            (stored,) = new.iterdir()
            assert b"Delivered-To: carol@example.org\n" in stored.read_bytes()
            assert b"Subject: guide\n" in stored.read_bytes()
    finally:
        if server is not None:
            server.stop()
        postfix.stop()
        postfix.remove()
