"""One session per maildrop (RFC 1939 section 8; RFC 2449 ``[IN-USE]``) over real sockets."""

from __future__ import annotations

from tests.support.server import MailslotServer
from tests.support.wire import Pop3Wire


def test_second_session_gets_in_use_until_the_first_quits(mailslot: MailslotServer) -> None:
    mailslot.builder("alice").add(b"Subject: locked\n\nx\n")
    context = mailslot.tls_files.client_context()
    password = mailslot.password("alice")
    with Pop3Wire(*mailslot.implicit, tls_context=context) as first:
        first.login("alice", password)
        with Pop3Wire(*mailslot.starttls) as second:
            assert second.command("STLS").startswith(b"+OK")
            second.start_tls(context)
            assert second.command("USER alice").startswith(b"+OK")
            reply = second.command("PASS " + password)
            assert reply.startswith(b"-ERR [IN-USE]"), reply
        assert first.command("STAT").startswith(b"+OK 1 ")
        assert first.command("QUIT").startswith(b"+OK")
        assert first.read_until_eof() == b""
    # The first session has finished QUIT (its connection is closed): the lock is free.
    with Pop3Wire(*mailslot.implicit, tls_context=context) as third:
        third.login("alice", password)
        assert third.command("STAT").startswith(b"+OK 1 ")
        third.command("QUIT")


def test_other_users_are_not_blocked(mailslot: MailslotServer) -> None:
    context = mailslot.tls_files.client_context()
    with Pop3Wire(*mailslot.implicit, tls_context=context) as alice:
        alice.login("alice", mailslot.password("alice"))
        with Pop3Wire(*mailslot.implicit, tls_context=context) as bob:
            bob.login("bob", mailslot.password("bob"))
            assert bob.command("STAT") == b"+OK 0 0\r\n"
