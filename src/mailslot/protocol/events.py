"""What the core asks of the outside (the driver), and what it reports.

The sans-IO core (RFC 1939 sessions) never authenticates, reads a message, deletes or starts
TLS itself: it hands the driver one of these events from :meth:`Connection.next_event` and
waits for the matching answer method (``login_succeeded``/``login_failed``,
``message_started``/``message_data``/``message_finished``/``message_failed``,
``commit_succeeded``/``commit_failed``, ``tls_started``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol


class SnapshotEntry(Protocol):
    """One message as the core needs it: RFC 1939 unique-id and octet count."""

    @property
    def uid(self) -> str: ...

    @property
    def size(self) -> int: ...


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""No complete command is buffered: read more and call ``receive_data``."""


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Verify these credentials (USER/PASS, or SASL ``mechanism``), then open the maildrop."""

    username: str
    password: str = ""
    mechanism: str = "USER"
    authzid: str | None = None

    def __repr__(self) -> str:
        # Never let a password reach a log line through repr().
        return f"Authenticate(username={self.username!r}, mechanism={self.mechanism!r})"


@dataclass(frozen=True, slots=True)
class RetrieveMessage:
    """Stream message ``number`` (1-based) for RETR, or its top for TOP (``top_lines``)."""

    number: int
    message: SnapshotEntry
    top_lines: int | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    """QUIT in TRANSACTION (RFC 1939 section 6): remove these messages durably."""

    deleted: tuple[SnapshotEntry, ...]


@dataclass(frozen=True, slots=True)
class StartTls:
    """The ``+OK`` to STLS is queued: flush it, then run the TLS handshake (RFC 2595 section 4)."""


@dataclass(frozen=True, slots=True)
class BadCommand:
    """A client error was answered with ``-ERR``; the session goes on. For the log."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reset:
    """RSET was answered (RFC 1939 section 5): the delete marks are gone, and the messages
    retrieved so far are not to be flagged seen at the end (Dovecot's RSET drops its pending
    ``\\Seen`` changes).  Nothing to answer."""


@dataclass(frozen=True, slots=True)
class Close:
    """Flush what is queued, then close the connection (with TLS close_notify)."""

    reason: str


Event = _NeedData | Authenticate | RetrieveMessage | Commit | StartTls | BadCommand | Reset | Close
