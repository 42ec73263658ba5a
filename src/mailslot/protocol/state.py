"""The POP3 session states and the one table of what each state allows (RFC 1939 section 3).

AUTHORIZATION -> TRANSACTION on a successful login; TRANSACTION -> UPDATE on QUIT; UPDATE ends
the session.  Two internal states make the waits on the outside explicit: while a login, a
message or a commit is being handled no further command is read.  Anything not in the table is
answered ``-ERR`` and the session goes on.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    """A session's state."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


# Verbs allowed per state.  CAPA (RFC 2449 section 5) and QUIT are fine everywhere a command
# is read; NOOP only in TRANSACTION (RFC 1939 section 5).  STLS (RFC 2595 section 4), AUTH
# (RFC 5034) and UTF8 (RFC 6856 section 2) only before login.
ALLOWED: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset({"USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT", "UTF8"}),
    State.TRANSACTION: frozenset(
        {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT", "CAPA"}
    ),
    State.UPDATE: frozenset(),
    State.CLOSED: frozenset(),
}

# Every verb this server knows; others are "unknown command" rather than "wrong state".
KNOWN_VERBS: frozenset[str] = frozenset().union(*ALLOWED.values())


def allowed(state: State, verb: str) -> bool:
    """Whether ``verb`` may be issued in ``state``."""
    return verb in ALLOWED[state]
