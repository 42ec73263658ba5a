#!/usr/bin/env python3
"""Fuzz a whole sans-IO POP3 session: arbitrary client bytes in arbitrary states (RFC 1939,
2449, 2595, 3206, 5034).

Input: one octet of configuration (TLS, STLS, plaintext, limits), two octets seeding a
chunking, eight octets scripting the answers to the core's events (login accepted or refused
with a reason, a message read, failing before or after its first line, a commit that holds
or fails), up to three stored messages (an octet of length, then the bytes), then the bytes
the client sends.  A fake driver answers every event as scripted, like server/session.py.
Properties checked, beyond "no crash":

- nothing escapes the core; no answer is refused as out of turn (``LocalProtocolError``);
- the same events and the same output whatever the chunking of the client's bytes (one line
  at a time, seeded pieces, all at once) and of the stored messages, except that STLS with
  bytes already behind it closes the session (RFC 2595 section 4) where the one-line-at-a-
  time run starts TLS; once ``NEED_DATA`` is answered, fewer octets than the line cap are held;
- every reply ends in CRLF, status lines are at most 512 octets (RFC 2449 section 4), and
  a message's body reads back as the stored message (RFC 1939 sections 3, 11): "+OK" with its
  wire size, dot-stuffed, one terminator;
- the session's model holds: messages are retrieved and deleted only in TRANSACTION, by valid
  numbers not marked deleted; STAT agrees with the deletions; the commit holds exactly the
  messages marked deleted since the last RSET; after ``Close`` nothing more is sent or read;
- an ``Authenticate`` event's repr does not depend on the password.

Run: ``python fuzz/fuzz_connection.py fuzz/corpus/connection -runs=N`` (see docs/fuzzing.md).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from _harness import Reader, main, split_at_random
from fuzz_dotstuff import client_read, expected_body

from mailslot.protocol.connection import Connection, CoreConfig
from mailslot.protocol.dotstuff import wire_size
from mailslot.protocol.events import (
    NEED_DATA,
    Authenticate,
    BadCommand,
    Close,
    Commit,
    Event,
    Reset,
    RetrieveMessage,
    StartTls,
)
from mailslot.protocol.responses import Failure
from mailslot.protocol.state import State

_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")
_DELETED = re.compile(rb"\+OK Message (\d+) deleted\.")
_TWO_NUMBERS = re.compile(rb"\+OK (\d+) (\d+)")
_FAILURES = tuple(Failure)
_PIPELINED = Close("data pipelined after STLS")
_MAX_STATUS = 512  # RFC 2449 section 4, CRLF included
_MAX_STEPS = 100_000


@dataclass(frozen=True, slots=True)
class Entry:
    uid: str
    size: int


@dataclass(frozen=True, slots=True)
class Scenario:
    config: CoreConfig
    seed: int
    answers: bytes
    messages: tuple[bytes, ...]
    stream: bytes

    @property
    def snapshot(self) -> list[Entry]:
        return [Entry(f"uid-{n}", wire_size(m)) for n, m in enumerate(self.messages, 1)]


def scenario_of(data: bytes) -> Scenario:
    reader = Reader(data)
    flags = reader.byte()
    lenient = bool(flags & 8)
    config = CoreConfig(
        tls_active=bool(flags & 1),
        starttls_available=bool(flags & 2),
        allow_plaintext=bool(flags & 4),
        max_bad_commands_before_login=1000 if lenient else 3,
        max_bad_commands=1000 if lenient else 20,
        sasl_line_length=300 if flags & 16 else 8192,
    )
    seed = reader.uint(2)
    answers = reader.take(8).ljust(8, b"\x01")
    messages = tuple(reader.take(reader.byte()) for _ in range(reader.byte() % 4))
    return Scenario(config, seed, answers, messages, reader.rest())


Step = tuple[bytes, Event | None]


class Driver:
    """Plays the transport's part for one run; collects (output before it, event) pairs."""

    def __init__(self, scenario: Scenario, pieces: Sequence[bytes], split_messages: bool):
        self.scenario = scenario
        self.snapshot = scenario.snapshot
        self.pieces = pieces
        self.split_messages = split_messages
        self.conn = Connection(scenario.config)
        self.pending = bytearray()
        self.transcript: list[Step] = []
        self.answered = 0
        self.deleted: set[int] = set()
        self.committed = False
        self.cap = max(scenario.config.line_length, scenario.config.sasl_line_length)

    def answer_byte(self) -> int:
        value = self.scenario.answers[self.answered % len(self.scenario.answers)]
        self.answered += 1
        return value

    def collect(self) -> None:
        """Take what the core queued, check its lines, and follow DELE/RSET/STAT in it."""
        out = self.conn.data_to_send()
        if not out:
            return
        assert out.endswith(b"\r\n"), out[-40:]
        for line in out.split(b"\r\n")[:-1]:
            assert len(line) + 2 <= _MAX_STATUS, line[:60]
            if match := _DELETED.fullmatch(line):
                number = int(match.group(1))
                assert number not in self.deleted
                self.deleted.add(number)
            elif line.startswith(b"+OK maildrop has "):
                self.deleted.clear()
            elif match := _TWO_NUMBERS.fullmatch(line):
                self.check_two_numbers(int(match.group(1)), int(match.group(2)))
        self.pending += out

    def check_two_numbers(self, first: int, second: int) -> None:
        """STAT's count and size, or LIST n's number and size: one of them must hold."""
        left = [m for n, m in enumerate(self.snapshot, 1) if n not in self.deleted]
        stat = (len(left), sum(m.size for m in left))
        listed = 1 <= first <= len(self.snapshot) and first not in self.deleted
        assert (first, second) == stat or (listed and self.snapshot[first - 1].size == second)

    def run(self) -> list[Step]:
        conn = self.conn
        self.pending += conn.data_to_send()
        fed = 0
        eof = False
        for _ in range(_MAX_STEPS):
            event = conn.next_event()
            if event is NEED_DATA:
                assert conn.buffered < self.cap, (conn.buffered, self.cap)
                self.collect()
                if fed < len(self.pieces):
                    conn.receive_data(self.pieces[fed])
                    fed += 1
                else:
                    assert not eof, "NEED_DATA after the end of the stream"
                    conn.receive_data(b"")
                    eof = True
                continue
            self.collect()
            self.transcript.append((bytes(self.pending), event))
            self.pending.clear()
            if isinstance(event, Close):
                self.closed(event)
                return self.transcript
            self.answer(event)
        raise AssertionError("the session did not end")

    def closed(self, close: Close) -> None:
        conn = self.conn
        assert conn.closed and conn.state in (State.CLOSED, State.UPDATE)
        assert conn.next_event() == close
        if close.reason == "quit" and conn.state is State.UPDATE and not self.committed:
            assert not self.deleted, "QUIT in TRANSACTION lost the deletions"
        self.collect()
        self.transcript.append((bytes(self.pending), None))
        conn.receive_data(b"CAPA\r\nQUIT\r\n")
        assert conn.next_event() == close and conn.data_to_send() == b""

    def answer(self, event: Event) -> None:
        conn = self.conn
        match event:
            case Authenticate():
                assert conn.state is State.AUTHORIZATION
                assert repr(event) == repr(dataclasses.replace(event, password=""))
                choice = self.answer_byte()
                if choice % 4:
                    conn.login_succeeded(self.snapshot)
                    assert conn.state is State.TRANSACTION
                    self.deleted.clear()
                else:
                    conn.login_failed(_FAILURES[choice // 4 % len(_FAILURES)])
                    # A refused login counts as a bad command: it may be the last one allowed.
                    assert conn.state is State.AUTHORIZATION or conn.closed
            case RetrieveMessage(number=number, message=message, top_lines=top_lines):
                assert conn.state is State.TRANSACTION
                assert 1 <= number <= len(self.snapshot) and number not in self.deleted
                assert message == self.snapshot[number - 1]
                self.retrieve(number, top_lines)
            case Commit(deleted=deleted):
                assert conn.state is State.UPDATE
                expected = tuple(self.snapshot[n - 1] for n in sorted(self.deleted))
                assert deleted == expected, (deleted, expected)
                self.committed = True
                if self.answer_byte() % 4:
                    conn.commit_succeeded()
                else:
                    conn.commit_failed(Failure.SYS_TEMP)
                assert conn.closed
            case StartTls():
                assert conn.state is State.AUTHORIZATION and not conn.tls_active
                assert conn.buffered == 0
                conn.tls_started()
                assert conn.tls_active
            case Reset():
                # RSET was answered: the marks are gone (the core's reply says so too).
                assert conn.state is State.TRANSACTION and not conn.delete_marks
            case BadCommand():
                pass
            case _:
                raise AssertionError(f"unexpected event {event!r}")

    def retrieve(self, number: int, top_lines: int | None) -> None:
        conn = self.conn
        choice = self.answer_byte()
        stored = self.scenario.messages[number - 1]
        if choice % 8 == 0:
            conn.message_failed(_FAILURES[choice // 8 % len(_FAILURES)])
            self.collect()
            return
        conn.message_started()
        if choice % 8 == 1:
            # Failing after the "+OK": the client must see the connection break.
            conn.message_failed(Failure.SYS_TEMP)
            assert conn.closed
            self.pending += conn.data_to_send()
            return
        pieces = (
            split_at_random(stored, self.scenario.seed + number)
            if self.split_messages
            else [stored]
        )
        for piece in pieces:
            if not conn.message_data(piece):
                assert top_lines is not None
                break
        conn.message_finished()
        out = conn.data_to_send()
        status, _, wire = out.partition(b"\r\n")
        if top_lines is None:
            assert status == b"+OK %d octets" % wire_size(stored)
        else:
            assert status == b"+OK Top of message follows."
        assert client_read(wire) == expected_body(stored, top_lines)
        self.pending += out


def same_session(reference: list[Step], other: list[Step]) -> None:
    """``other`` is ``reference``, or stops where it started TLS because bytes were pipelined."""
    if other == reference:
        return
    assert other[-2][1] == _PIPELINED, (reference, other)
    at = len(other) - 2
    assert other[:at] == reference[:at], (reference, other)
    assert reference[at] == (other[at][0], StartTls()), (reference[at], other[at])


def check(data: bytes) -> None:
    """The property function: see the module docstring."""
    scenario = scenario_of(data)
    stream = scenario.stream
    one_line_at_a_time = _LINE.findall(stream)
    reference = Driver(scenario, one_line_at_a_time, split_messages=False).run()
    assert _PIPELINED not in [event for _, event in reference]
    for pieces in (split_at_random(stream, scenario.seed, 32), [stream] if stream else []):
        same_session(reference, Driver(scenario, pieces, split_messages=True).run())


if __name__ == "__main__":
    main(check)
