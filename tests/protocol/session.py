"""An in-memory driver for the sans-IO core: a fake maildrop and scripted answers to events.

It plays the part the asyncio session will play, with no I/O: feed bytes, take events until
the core needs data or closes, answer each event from fixed data, and collect what the core
would send.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailslot.protocol.connection import Connection, CoreConfig
from mailslot.protocol.dotstuff import wire_size
from mailslot.protocol.events import (
    NEED_DATA,
    Authenticate,
    Close,
    Commit,
    Event,
    RetrieveMessage,
    StartTls,
)
from mailslot.protocol.responses import Failure


@dataclass(frozen=True, slots=True)
class Entry:
    """A snapshot entry as the core sees it."""

    uid: str
    size: int


# Stored bytes, as a Maildir would hold them (LF line ends) or as received (CRLF).
MESSAGES: tuple[tuple[str, bytes], ...] = (
    ("uid-one", b"From: a@example.org\nSubject: one\n\nHello\n.dot line\n"),
    ("uid-two", b"Subject: two\r\n\r\nbody\r\n"),
    ("uid-three", b"Subject: three\n\nx\ny\nz"),
)

ACCOUNTS: dict[str, str] = {"alice": "secret", "bob": "pass word"}

PLAIN = CoreConfig(allow_plaintext=True)
NO_PLAIN = CoreConfig()
STLS_OFFERED = CoreConfig(starttls_available=True)
STLS_AND_PLAIN = CoreConfig(starttls_available=True, allow_plaintext=True)
POP3S = CoreConfig(tls_active=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Session:
    """One connection to the core with a driver that answers from fixed data."""

    config: CoreConfig = PLAIN
    messages: Sequence[tuple[str, bytes]] = MESSAGES
    accounts: dict[str, str] = field(default_factory=lambda: dict(ACCOUNTS))
    chunk_size: int = 5
    login_failure: Failure | None = None
    message_failure: Failure | None = None
    commit_failure: Failure | None = None
    events: list[Event] = field(default_factory=list)
    commits: list[tuple[Entry, ...]] = field(default_factory=list)
    conn: Connection = field(init=False)
    greeting: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.conn = Connection(self.config)
        self.greeting = self.conn.data_to_send()

    @property
    def snapshot(self) -> list[Entry]:
        return [Entry(uid, wire_size(data)) for uid, data in self.messages]

    def content(self, uid: str) -> bytes:
        return dict(self.messages)[uid]

    def send(self, data: bytes) -> bytes:
        """Feed bytes, run the core until it needs data or closes, return what it sends."""
        self.conn.receive_data(data)
        return self.run()

    def say(self, line: str) -> str:
        """Send one command line; the reply decoded as Latin-1 so any byte survives."""
        return self.send(line.encode("latin-1") + b"\r\n").decode("latin-1")

    def run(self) -> bytes:
        while True:
            event = self.conn.next_event()
            self.events.append(event)
            if event is NEED_DATA or isinstance(event, Close):
                return self.conn.data_to_send()
            self.answer(event)

    def answer(self, event: Event) -> None:
        match event:
            case Authenticate(username=username, password=password):
                if self.login_failure is not None:
                    self.conn.login_failed(self.login_failure)
                elif self.accounts.get(username) == password:
                    self.conn.login_succeeded(self.snapshot)
                else:
                    self.conn.login_failed(Failure.AUTH)
            case RetrieveMessage(message=message):
                if self.message_failure is not None:
                    self.conn.message_failed(self.message_failure)
                    return
                self.conn.message_started()
                data = self.content(message.uid)
                for start in range(0, len(data), self.chunk_size):
                    if not self.conn.message_data(data[start : start + self.chunk_size]):
                        break
                self.conn.message_finished()
            case Commit(deleted=deleted):
                self.commits.append(tuple(Entry(m.uid, m.size) for m in deleted))
                if self.commit_failure is not None:
                    self.conn.commit_failed(self.commit_failure)
                else:
                    self.conn.commit_succeeded()
            case StartTls():
                self.conn.tls_started()
            case _:
                pass  # BadCommand: only for the log

    def login(self, user: str = "alice") -> None:
        assert self.say(f"USER {user}") == "+OK\r\n"
        assert self.say(f"PASS {self.accounts[user]}") == "+OK Logged in.\r\n"

    def of_type(self, kind: type[object]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]
