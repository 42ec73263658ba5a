"""``[store] client_workarounds`` byte for byte against Dovecot's ``pop3_client_workarounds``.

A private Dovecot 2.3 with ``pop3_client_workarounds = outlook-no-nuls oe-ns-eoh`` and a
mailslot with both workarounds serve the same Maildir; every RETR and TOP reply (first line
and body, terminator included) and the LIST and STAT replies must be the same octets.  A
third run without workarounds shows they change what is sent (NUL octets and a header
without its empty line), so the comparison is not between two unchanged streams.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.dovecot import DovecotServer
from tests.support.maildir import MaildirBuilder
from tests.support.passwd import DEFAULT_USERS
from tests.support.server import MailslotServer
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire

pytestmark = pytest.mark.dovecot

PASSWORD = "alice-secret"
MESSAGES = [
    b"Subject: nul\n\nbody\x00with a NUL\n\x00\n",
    b"Subject: no end of header\nX-Other: y\n",
    b"Subject: no end of header, no final line end",
    b"Subject: dots\n\nline 1\n.dotted\n..two\nline 4\n",
    b"\nan empty first line: all body\nsecond\n",
    b"Subject: nul in \x00 the header\nX: 1\n",
    b"Subject: crlf\r\nX: 2\r\n",
    b"Subject: crlf body\r\n\r\nbody \x00\r\n.\r\nend\r\n",
]
COMMANDS = ["LIST", "STAT"] + [
    f"{verb} {n}" for n in range(1, len(MESSAGES) + 1) for verb in ("RETR", "TOP", "TOP0")
]


def _replies(address: tuple[str, int], tls_files: TlsFiles) -> list[bytes]:
    out = []
    with Pop3Wire(*address) as wire:
        assert wire.command("STLS").startswith(b"+OK")
        wire.start_tls(tls_files.client_context())
        wire.login("alice", PASSWORD)
        for command in COMMANDS:
            if command.startswith("TOP0"):
                command = f"TOP {command.split()[1]} 0"
            elif command.startswith("TOP"):
                command = f"TOP {command.split()[1]} 1"
            first = wire.command(command)
            assert first.startswith(b"+OK"), (command, first)
            multiline = command == "LIST" or command.startswith(("RETR", "TOP"))
            # Dovecot's "+OK N octets" and mailslot's wording differ; the octets must not.
            out.append(first.split(b" ")[1] if command.startswith("RETR") else b"")
            out.append(wire.multiline() if multiline else first)
        assert wire.command("QUIT").startswith(b"+OK")
    return out


@pytest.fixture
def dovecot(tls_files: TlsFiles) -> Iterator[DovecotServer]:
    server = DovecotServer(
        tls_files,
        DEFAULT_USERS,
        settings={"pop3_client_workarounds": "outlook-no-nuls oe-ns-eoh"},
    )
    builder = MaildirBuilder(server.maildir("alice"), first_seconds=1_700_000_000)
    for data in MESSAGES:
        builder.add(data, folder="cur")
    with server:
        yield server


def _mailslot(factory: object, dovecot: DovecotServer, workarounds: list[str]) -> MailslotServer:
    return factory(  # type: ignore[operator, no-any-return]
        store={
            "maildir": f"{dovecot.mail_root}/{{user}}/Maildir",
            "uidl_format": "%f",
            "flag_updates": False,
            "client_workarounds": workarounds,
        }
    )


def test_retr_and_top_match_dovecot_byte_for_byte(
    mailslot_factory: object, dovecot: DovecotServer, tls_files: TlsFiles
) -> None:
    theirs = _replies(("127.0.0.1", dovecot.pop3_port), tls_files)
    mailslot = _mailslot(mailslot_factory, dovecot, ["outlook-no-nuls", "oe-ns-eoh"])
    ours = _replies(mailslot.starttls, tls_files)
    for command, mine, dovecots in zip(COMMANDS, ours[1::2], theirs[1::2], strict=True):
        assert mine == dovecots, command
    assert ours == theirs
    plain = _mailslot(mailslot_factory, dovecot, [])
    unchanged = _replies(plain.starttls, tls_files)
    differ = [c for c, a, b in zip(COMMANDS, unchanged[1::2], ours[1::2], strict=True) if a != b]
    # NULs (messages 1, 6, 8) and the missing end of header (2, 3, 6, 7) changed; LIST did not.
    assert "LIST" not in differ
    assert {"RETR 1", "RETR 2", "RETR 3", "RETR 6", "RETR 7", "RETR 8"} <= set(differ)
    assert not {"RETR 4", "RETR 5"} & set(differ)
