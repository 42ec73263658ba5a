"""Delivery and POP3 side by side on one ``mailslot serve``: nothing lost, nothing twice.

One thread delivers messages over LMTP (RFC 2033) as fast as the server takes them while
another runs POP3 sessions in a loop: log in, RETR everything, DELE every other message,
QUIT.  At the end every message that got 250 was either fetched and deleted, or is still in
the maildrop exactly once; a message is never deleted without having been fetched, and never
served with other bytes than were delivered.
"""

from __future__ import annotations

import poplib
import re
import smtplib
import threading
from collections import Counter

from tests.support.passwd import PasswdUser
from tests.support.server import Listener, MailslotServer, ServerFactory

DELIVERIES = 120
MARKER = re.compile(rb"X-Seq: (\d+)\r\n")


def _message(seq: int) -> bytes:
    return (
        f"From: sender@example.org\r\nTo: carol@example.test\r\nSubject: n{seq}\r\n"
        f"X-Seq: {seq}\r\n\r\nbody of {seq}\r\n.starts with a dot\r\n"
    ).encode()


def _deliver_all(port: int, accepted: list[int], errors: list[BaseException]) -> None:
    try:
        with smtplib.LMTP("127.0.0.1", port, timeout=30) as lmtp:
            for seq in range(DELIVERIES):
                lmtp.sendmail("sender@example.org", ["carol@example.test"], _message(seq))
                accepted.append(seq)  # sendmail raises unless the recipient got 250
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def _login(server: MailslotServer) -> poplib.POP3:
    host, port = server.starttls
    client = poplib.POP3(host, port, timeout=30)
    client.stls(server.tls_files.client_context())
    client.user("carol")
    client.pass_(server.password("carol"))
    return client


def _retr_all(client: poplib.POP3) -> list[tuple[int, int, bytes]]:
    """(message number, X-Seq, bytes as the client sees them) for every message."""
    count, _ = client.stat()
    messages = []
    for number in range(1, count + 1):
        _, lines, _ = client.retr(number)
        data = b"".join(line + b"\r\n" for line in lines)
        match = MARKER.search(data)
        assert match is not None, data[:200]
        messages.append((number, int(match.group(1)), data))
    return messages


def _session(server: MailslotServer) -> tuple[dict[int, bytes], list[int]]:
    """One POP3 session: fetch all, delete every other one; returns (fetched, deleted)."""
    client = _login(server)
    fetched: dict[int, bytes] = {}
    deleted: list[int] = []
    for number, seq, data in _retr_all(client):
        fetched[seq] = data
        if number % 2 == 0:
            client.dele(number)
            deleted.append(seq)
    client.quit()
    return fetched, deleted


def test_lmtp_deliveries_during_pop3_sessions_lose_and_duplicate_nothing(
    mailslot_factory: ServerFactory,
) -> None:
    server = mailslot_factory(
        listeners=(Listener("starttls"), Listener("none", protocol="lmtp")),
        extra_users=[PasswdUser("carol", "carol-secret")],
    )
    _, lmtp_port = server.listener("none", protocol="lmtp")
    accepted: list[int] = []
    errors: list[BaseException] = []
    sender = threading.Thread(target=_deliver_all, args=(lmtp_port, accepted, errors))
    sender.start()
    deleted: Counter[int] = Counter()
    served: dict[int, bytes] = {}
    sessions = 0
    try:
        while sender.is_alive() or sessions == 0:
            fetched, gone = _session(server)
            sessions += 1
            for seq, data in fetched.items():
                assert seq not in deleted, f"message {seq} served again after its deletion"
                served.setdefault(seq, data)
                assert served[seq] == data, f"message {seq} changed between sessions"
            deleted.update(gone)
    finally:
        sender.join(timeout=120)
    assert not errors, errors
    assert sorted(accepted) == list(range(DELIVERIES))

    remaining = _last_look(server)
    assert max(deleted.values(), default=1) == 1
    assert not set(remaining) & set(deleted)
    assert set(remaining) | set(deleted) == set(accepted), "a delivered message went missing"
    for seq, data in {**served, **remaining}.items():
        # Delivery adds its trace headers in front; the delivered bytes follow unchanged.
        assert data.endswith(_message(seq)), seq
    assert sessions >= 2, "the deliveries never overlapped a session"


def _last_look(server: MailslotServer) -> dict[int, bytes]:
    client = _login(server)
    remaining: dict[int, bytes] = {}
    for _, seq, data in _retr_all(client):
        assert seq not in remaining, f"message {seq} is in the maildrop twice"
        remaining[seq] = data
    client.quit()
    return remaining
