"""``mailslot import-dovecot`` on real Dovecot configurations (issue 16).

- Debian's shipped configuration (/etc/dovecot, dovecot-core): the generated file passes
  ``mailslot check-config`` once the certificate it names exists, read through ``doveconf -n``
  and through the files alike.
- The configuration tests/support/dovecot.py runs: Dovecot serves some Maildirs, stops, and a
  mailslot started from the imported file on the same ports serves every user the same LIST,
  UIDL and messages.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.dovecot import DovecotServer, dovecot_version
from tests.support.maildir import SAMPLE_MESSAGES, MaildirBuilder
from tests.support.passwd import DEFAULT_USERS
from tests.support.programs import require_program
from tests.support.server import Listener, MailslotServer
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire

pytestmark = pytest.mark.dovecot

SHIPPED = Path("/etc/dovecot")


def mailslot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailslot", *args], capture_output=True, text=True, timeout=60
    )


def settings_of(toml: str) -> list[str]:
    """The file without its comments: the settings alone."""
    return [line for line in toml.splitlines() if line and not line.startswith("#")]


def test_debian_shipped_configuration(tmp_path: Path, tls_files: TlsFiles) -> None:
    require_program("doveconf")
    if not (SHIPPED / "dovecot.conf").exists():
        pytest.fail("dovecot-core is installed but /etc/dovecot/dovecot.conf is missing")
    copy = tmp_path / "dovecot"
    shutil.copytree(SHIPPED, copy, symlinks=True)
    # The files the configuration names: its certificate and key (Debian's postinst makes
    # them; here the test's own take their place in the copy).
    ssl = copy / "conf.d" / "10-ssl.conf"
    text = ssl.read_text()
    text = re.sub(r"(?m)^ssl_cert = <.*$", f"ssl_cert = <{tls_files.certificate}", text)
    text = re.sub(r"(?m)^ssl_key = <.*$", f"ssl_key = <{tls_files.private_key}", text)
    ssl.write_text(text)
    outputs = []
    for flags in ([], ["--no-doveconf"]):
        output = tmp_path / f"mailslot{len(outputs)}.toml"
        done = mailslot(
            "import-dovecot", "--from", str(copy / "dovecot.conf"), "--output", str(output), *flags
        )
        assert done.returncode == 0, done.stderr
        # Debian's default is mbox in /var/mail: said, on stderr and in the file.
        assert "not carried over: mail_location = mbox:" in done.stderr
        generated = output.read_text()
        assert "#   mail_location = mbox:~/mail:INBOX=/var/mail/%u" in generated
        assert 'backend = "dovecot"' in generated  # passdb pam: through Dovecot's auth
        assert f'certificate = "{tls_files.certificate}"' in generated
        reported = sorted(
            line.split(" (")[0] for line in done.stderr.splitlines() if line.startswith("not ")
        )
        outputs.append((settings_of(generated), reported))
        # PAM's users are system users: which account serves them is the administrator's
        # call, which the report says; as root, check-config needs that decision.
        if os.geteuid() == 0:
            with output.open("a") as file:
                file.write('\n[server]\nrun_as_root = "PAM users are system users"\n')
        checked = mailslot("check-config", "--config", str(output))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "OK" in checked.stdout
    assert outputs[0] == outputs[1]  # doveconf -n and the parser agree, report included


def _listing(address: tuple[str, int], tls: TlsFiles, user: str, password: str) -> list[bytes]:
    with Pop3Wire(*address) as wire:
        assert wire.command("STLS").startswith(b"+OK")
        wire.start_tls(tls.client_context())
        wire.login(user, password)
        replies = []
        for command in ("LIST", "UIDL"):
            assert wire.command(command).startswith(b"+OK")
            replies.append(wire.multiline())
        count = len(replies[0].splitlines()) - 1
        for number in range(1, count + 1):
            assert wire.command(f"RETR {number}").startswith(b"+OK")
            replies.append(wire.multiline())
        assert wire.command("QUIT").startswith(b"+OK")
    return replies


@pytest.mark.parametrize(
    ("uidl_format", "flags"),
    [("%08Xu%08Xv", []), ("%f", []), ("%08Xu%08Xv", ["--no-doveconf"])],
)
def test_own_configuration_serves_the_same(
    tmp_path: Path, tls_files: TlsFiles, uidl_format: str, flags: list[str]
) -> None:
    if dovecot_version()[:2] >= (2, 4):
        pytest.skip("import-dovecot reads Dovecot 2.3 configurations; this Dovecot is 2.4")
    dovecot = DovecotServer(tls_files, DEFAULT_USERS, settings={"pop3_uidl_format": uidl_format})
    try:
        messages = [data for name, data in SAMPLE_MESSAGES.items() if name != "empty"]
        for index, user in enumerate(DEFAULT_USERS):
            builder = MaildirBuilder(dovecot.maildir(user.name), first_seconds=1_650_000_000)
            for data in messages[index:]:
                builder.add(data, folder="new" if len(builder.messages) % 2 else "cur")
        dovecot.start()
        address = ("127.0.0.1", dovecot.pop3_port)
        theirs = {u.name: _listing(address, tls_files, u.name, u.password) for u in DEFAULT_USERS}
        dovecot.stop(remove=False)

        server = MailslotServer(
            tmp_path / "mailslot",
            tls_files,
            listeners=(
                Listener("starttls", port=dovecot.pop3_port),
                Listener("implicit", port=dovecot.pop3s_port),
            ),
        )
        done = mailslot(
            "import-dovecot",
            "--from",
            str(dovecot.config_path),
            "--output",
            str(server.config_path),
            "--force",
            *flags,
        )
        assert done.returncode == 0, done.stderr
        generated = server.config_path.read_text()
        assert f'uidl_format = "{uidl_format}"' in generated
        assert f'maildir = "{dovecot.mail_root}/{{user}}/Maildir"' in generated
        checked = mailslot("check-config", "--config", str(server.config_path))
        assert checked.returncode == 0, checked.stdout + checked.stderr + generated
        with server:
            ours = {u.name: _listing(address, tls_files, u.name, u.password) for u in DEFAULT_USERS}
        assert ours == theirs, server.log()
        # Served as the mail user, as Dovecot's mail processes were.
        assert f'user = "{pwd.getpwuid(dovecot.uid).pw_name}"' in generated
    finally:
        dovecot.stop()
