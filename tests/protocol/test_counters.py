"""What the core tells its driver for logs and metrics: octets in and out, the verbs it
read, and what a logout summary's %u needs (UIDL asked, delete marks, the first RETR)."""

from __future__ import annotations

from mailslot.protocol.connection import Connection

from .session import PLAIN, Session


def test_octets_in_and_out_count_everything_received_and_queued() -> None:
    s = Session()
    sent = len(s.greeting)
    received = 0
    for line in ["USER alice", "PASS secret", "STAT", "RETR 1", "NOOP"]:
        reply = s.say(line)
        received += len(line) + 2
        sent += len(reply.encode("latin-1"))
    assert (s.conn.octets_in, s.conn.octets_out) == (received, sent)
    s.conn.receive_data(b"NOO")  # not a command yet: received all the same
    assert s.conn.octets_in == received + 3
    assert s.conn.buffered == 3


def test_each_command_line_reports_its_verb_and_unknown_ones_as_unknown() -> None:
    verbs: list[str] = []
    conn = Connection(PLAIN, verbs.append)
    conn.receive_data(b"capa\r\nX-EVIL\x1b[31m arg\r\nQUIT\r\n")
    while conn.next_event().__class__.__name__ != "Close":
        pass
    assert verbs == ["CAPA", "unknown", "QUIT"]


def test_what_uidl_change_needs() -> None:
    s = Session()
    s.login()
    assert list(s.conn.snapshot) == s.snapshot
    assert (s.conn.uidl_listed, s.conn.lowest_retrieved, s.conn.delete_marks) == (
        False,
        0,
        frozenset(),
    )
    s.say("UIDL 2")
    s.say("RETR 3")
    s.say("RETR 2")
    s.say("RETR 9")  # no such message: not counted
    s.say("TOP 1 0")  # TOP is no RETR
    s.say("DELE 1")
    s.say("DELE 3")
    assert (s.conn.uidl_listed, s.conn.lowest_retrieved, s.conn.delete_marks) == (
        True,
        2,
        frozenset({1, 3}),
    )
    s.say("RSET")
    assert s.conn.delete_marks == frozenset()
