"""mailslot and a real Dovecot serve identical copies of one Maildir: same answers.

Dovecot's ``pop3_uidl_format = %f`` (the Maildir base name) is what mailslot uses, so even
the UIDL listings must match.  The empty message is left out: Dovecot sends "\\r\\n" before
the terminator of an empty message (RETR of "+OK 0 octets" carries two octets); mailslot
sends none, which the poplib tests check exactly.
"""

from __future__ import annotations

import pytest
from tests.support.dovecot import DovecotServer
from tests.support.maildir import SAMPLE_MESSAGES, MaildirBuilder, message_files
from tests.support.passwd import DEFAULT_USERS
from tests.support.server import MailslotServer
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire

pytestmark = pytest.mark.dovecot

PARITY_CORPUS = [data for name, data in SAMPLE_MESSAGES.items() if name != "empty"]
FIRST_SECONDS = 1_650_000_000


def _fill(builder: MaildirBuilder) -> None:
    for i, data in enumerate(PARITY_CORPUS):
        builder.add(data, folder="new" if i % 3 else "cur", flags="S" if i % 2 else "")


def _transcript(host: str, port: int, tls: TlsFiles, password: str) -> dict[str, object]:
    with Pop3Wire(host, port) as wire:
        assert wire.command("STLS").startswith(b"+OK")
        wire.start_tls(tls.client_context())
        wire.login("alice", password)
        stat = wire.command("STAT")
        assert wire.command("LIST").startswith(b"+OK")
        listing = wire.multiline()
        assert wire.command("UIDL").startswith(b"+OK")
        uidl = wire.multiline()
        count = int(stat.split()[1])
        bodies, tops, single = [], [], []
        for n in range(1, count + 1):
            single.append((wire.command(f"LIST {n}"), wire.command(f"UIDL {n}")))
            assert wire.command(f"RETR {n}").startswith(b"+OK")
            bodies.append(wire.multiline())
            for lines in (0, 3):
                assert wire.command(f"TOP {n} {lines}").startswith(b"+OK")
                tops.append(wire.multiline())
        errors = [wire.command(f"RETR {count + 1}")[:4], wire.command("DELE 0")[:4]]
        assert wire.command("DELE 1").startswith(b"+OK")
        after_dele = wire.command("STAT")
        assert wire.command("QUIT").startswith(b"+OK")
        return {
            "stat": stat,
            "list": listing,
            "uidl": uidl,
            "single": single,
            "retr": bodies,
            "top": tops,
            "errors": errors,
            "after_dele": after_dele,
        }


def test_same_answers_as_dovecot(mailslot: MailslotServer, tls_files: TlsFiles) -> None:
    _fill(MaildirBuilder(mailslot.maildir("alice"), first_seconds=FIRST_SECONDS))
    dovecot = DovecotServer(tls_files, DEFAULT_USERS)
    try:
        _fill(MaildirBuilder(dovecot.maildir("alice"), first_seconds=FIRST_SECONDS))
        dovecot.start()
        password = mailslot.password("alice")
        ours = _transcript(*mailslot.starttls, tls_files, password)
        theirs = _transcript("127.0.0.1", dovecot.pop3_port, tls_files, password)
        for key in ours:
            assert ours[key] == theirs[key], f"{key} differs; Dovecot log:\n{dovecot.log()}"
        # Both removed message 1 at QUIT and kept the other files' bytes.
        ours_left = message_files(mailslot.maildir("alice"))
        theirs_left = message_files(dovecot.maildir("alice"))
        assert ours_left.keys() == theirs_left.keys()
        assert ours_left == theirs_left
    finally:
        dovecot.stop()
