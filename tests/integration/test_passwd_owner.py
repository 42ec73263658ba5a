"""Run as root, mailslot gives every file it creates for a user the passwd-file's uid/gid.

A user whose line names another account (fields 3 and 4, Dovecot's userdb uid/gid) gets a
message by ``mailslot deliver`` (which creates the Maildir), then logs in, retrieves it (the
rename into ``cur/`` with the seen flag) and quits, with ``uidl_format`` set so that
``dovecot-uidlist`` is written too: every directory and file below the template's fixed
part belongs to that account, none to root; and a real Dovecot, whose mail process runs as
that account, serves the Maildir with the same UIDL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.dovecot import DovecotServer
from tests.support.server import ServerFactory
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire

SRC = Path(__file__).resolve().parents[2] / "src"

pytestmark = [
    pytest.mark.dovecot,
    pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away"),
]


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A mail root Dovecot's unprivileged mail processes can reach (pytest's tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="mailslot-owner-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_files_belong_to_the_passwd_files_uid_and_gid(
    mailslot_factory: ServerFactory, tls_files: TlsFiles, shared_root: Path
) -> None:
    account = pwd.getpwnam("nobody")
    uid, gid = account.pw_uid, account.pw_gid
    ours = mailslot_factory(
        start=False,
        allow_plaintext=True,
        store={"uidl_format": "%08Xu%08Xv", "maildir": f"{shared_root}/{{user}}/Maildir"},
    )
    ours.mail_root = shared_root
    ours.passwd_path.write_text(
        f"vm:{{PLAIN}}secret:{uid}:{gid}::::\nroot-owned:{{PLAIN}}secret::::::\n",
        encoding="utf-8",
    )
    ours.start()
    config = str(ours.config_path)
    for user in ("vm", "root-owned"):
        delivered = subprocess.run(
            [sys.executable, "-m", "mailslot", "deliver", "--config", config, "-u", user],
            input=b"Subject: hello\n\nbody\n",
            capture_output=True,
            env=dict(os.environ, PYTHONPATH=str(SRC)),
            timeout=60,
            check=False,
        )
        assert delivered.returncode == 0, delivered.stderr
        host, port = ours.starttls
        with Pop3Wire(host, port) as wire:
            wire.login(user, "secret")
            assert wire.command("UIDL").startswith(b"+OK")
            wire.multiline()
            assert wire.command("RETR 1").startswith(b"+OK")
            wire.multiline()
            assert wire.command("QUIT").startswith(b"+OK")

    def owners(user: str) -> dict[str, tuple[int, int]]:
        top = ours.mail_root / user
        found = {".": (top.stat().st_uid, top.stat().st_gid)}
        for directory, dirs, files in os.walk(top):
            for name in (*dirs, *files):
                st = os.lstat(os.path.join(directory, name))
                found[os.path.relpath(os.path.join(directory, name), top)] = (st.st_uid, st.st_gid)
        return found

    mine = owners("vm")
    names = set(mine)
    assert {"Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"} <= names
    assert "Maildir/dovecot-uidlist" in names
    assert any(n.startswith("Maildir/cur/") and n.endswith(":2,S") for n in names), names
    assert {owner for owner in mine.values()} == {(uid, gid)}, mine
    # A user without ids keeps the server's own, as before.
    assert {owner for owner in owners("root-owned").values()} == {(0, 0)}
    # Dovecot, whose mail process runs as that uid/gid, reads and updates what mailslot wrote
    # and gives the same UIDL.
    with Pop3Wire(host, port) as wire:
        wire.login("vm", "secret")
        assert wire.command("UIDL").startswith(b"+OK")
        mailslot_uidl = wire.multiline()
        assert wire.command("QUIT").startswith(b"+OK")
    dovecot = DovecotServer(
        tls_files,
        [],
        passwd_lines=[f"vm:{{PLAIN}}secret:{uid}:{gid}::::"],
        settings={
            "pop3_uidl_format": "%08Xu%08Xv",
            "mail_location": f"maildir:{shared_root}/%u/Maildir",
        },
    )
    try:
        dovecot.start()
        with Pop3Wire("127.0.0.1", dovecot.pop3_port) as wire:
            wire.login("vm", "secret")
            assert wire.command("UIDL").startswith(b"+OK")
            assert wire.multiline() == mailslot_uidl, dovecot.log()
            assert wire.command("RETR 1").startswith(b"+OK"), dovecot.log()
            wire.multiline()
            assert wire.command("QUIT").startswith(b"+OK")
    finally:
        dovecot.stop()
    assert "Permission denied" not in dovecot.final_log, dovecot.final_log
