"""``[store] lock_session = false``: two poplib sessions of one maildrop at once.

Dovecot's ``pop3_lock_session = no``: both log in, both see the same five messages, both mark
some for deletion (message 2 by both), both QUIT with ``+OK``.  What remains is exactly what
neither deleted, and nothing deleted comes back at the next login.
"""

from __future__ import annotations

import poplib

import pytest
from tests.support.maildir import message_files
from tests.support.popclient import pop3_connect
from tests.support.server import MailslotServer

from mailslot.config import ConfigError, load


def _login(server: MailslotServer) -> poplib.POP3:
    client = pop3_connect(server, "implicit")
    client.user("alice")
    client.pass_(server.password("alice"))
    return client


def test_two_sessions_delete_side_by_side(mailslot_factory: object) -> None:
    server: MailslotServer = mailslot_factory(  # type: ignore[operator]
        store={"lock_session": False}, limits={"max_sessions_per_user": 4}
    )
    builder = server.builder("alice")
    for n in range(1, 6):
        builder.add(f"Subject: {n}\n\nmessage {n}\n".encode())
    first = _login(server)
    second = _login(server)  # no [IN-USE]
    assert first.stat() == second.stat()
    uids = [line.split()[1] for line in first.uidl()[1]]
    assert first.retr(2)[1][-1] == b"message 2"
    first.dele(1)
    first.dele(2)
    second.dele(2)
    second.dele(4)
    assert first.quit().startswith(b"+OK")
    # Message 1 is gone for the second session too: RETR says so, the session goes on.
    with pytest.raises(poplib.error_proto, match="-ERR"):
        second.retr(1)
    assert second.quit().startswith(b"+OK")  # DELE 2, already gone, is no error
    third = _login(server)
    try:
        left = [line.split()[1] for line in third.uidl()[1]]
        assert left == [uids[2], uids[4]]
        assert third.retr(1)[1][-1] == b"message 3"
    finally:
        third.quit()
    assert len(message_files(server.maildir("alice"))) == 2


def test_check_config_wants_more_sessions_per_user(mailslot_factory: object) -> None:
    server: MailslotServer = mailslot_factory(  # type: ignore[operator]
        store={"lock_session": False}, start=False
    )
    with pytest.raises(ConfigError, match=r"store\.lock_session: .*max_sessions_per_user"):
        load(server.config_path)
