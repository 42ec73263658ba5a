"""Replies as data: status lines and the RFC 2449 / RFC 3206 response codes.

RFC 1939 section 3: a response is a status indicator (``+OK`` or ``-ERR``) and text, one line
ending in CRLF.  RFC 2449 section 8 adds extended response codes in brackets after ``-ERR``;
RFC 3206 defines ``[SYS/TEMP]``, ``[SYS/PERM]`` (section 4) and ``[AUTH]`` (section 5).
Exception text never reaches the client: every reply text is a constant of this module or
built from numbers.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class Code(enum.Enum):
    """Extended response codes (RFC 2449 section 8, RFC 3206)."""

    IN_USE = "IN-USE"
    LOGIN_DELAY = "LOGIN-DELAY"
    SYS_TEMP = "SYS/TEMP"
    SYS_PERM = "SYS/PERM"
    AUTH = "AUTH"


class Failure(enum.Enum):
    """Why the outside refused a login, a message or a commit; mapped to a reply below."""

    AUTH = "auth"
    IN_USE = "in-use"
    SYS_TEMP = "sys-temp"
    SYS_PERM = "sys-perm"
    # A commit that removed some of the marked messages, not all (RFC 1939 section 6).
    PARTIAL_DELETE = "partial-delete"
    # The user lives on another server (a Dovecot passdb's nologin with host=): POP3 has no
    # referral code (RFC 2449 section 8 lists none), so a bare -ERR, as Dovecot's pop3-login.
    REFERRAL = "referral"


FAILURE_REPLIES: dict[Failure, tuple[Code | None, str]] = {
    Failure.AUTH: (Code.AUTH, "Authentication failed."),
    Failure.IN_USE: (Code.IN_USE, "Mailbox is locked by another POP3 session."),
    Failure.SYS_TEMP: (Code.SYS_TEMP, "Temporary server failure, try again later."),
    Failure.SYS_PERM: (Code.SYS_PERM, "Mailbox unavailable."),
    Failure.PARTIAL_DELETE: (Code.SYS_TEMP, "Some marked messages were not removed."),
    Failure.REFERRAL: (None, "Try this server instead."),
}


def ok(text: str = "") -> bytes:
    """``+OK`` line."""
    return b"+OK " + text.encode() + b"\r\n" if text else b"+OK\r\n"


def err(text: str, code: Code | None = None) -> bytes:
    """``-ERR`` line, with a response code where one applies."""
    if code is None:
        return b"-ERR " + text.encode() + b"\r\n"
    return b"-ERR [" + code.value.encode() + b"] " + text.encode() + b"\r\n"


def failure(reason: Failure, text: str | None = None) -> bytes:
    """The ``-ERR`` line for a refusal from the outside; ``text`` replaces the standard
    text (a Dovecot ``nologin`` reason), any character that is not printable made ``?``."""
    code, standard = FAILURE_REPLIES[reason]
    if text is None:
        return err(standard, code)
    return err("".join(c if c.isprintable() else "?" for c in text), code)


def multiline(first: bytes, lines: Sequence[bytes]) -> bytes:
    """A status line followed by lines and the terminator (lines must not start with '.')."""
    return first + b"".join(line + b"\r\n" for line in lines) + b".\r\n"


# Fixed texts, kept together so tests and transcripts can refer to them.
GREETING = "POP3 server ready."
UNKNOWN_COMMAND = "Unknown command."
BAD_STATE = "Command not valid in this state."
BAD_ARGUMENT = "Invalid arguments."
NO_SUCH_MESSAGE = "No such message."
ALREADY_DELETED = "Message is deleted."
LINE_TOO_LONG = "Command line too long."
TOO_MANY_ERRORS = "Too many invalid commands, disconnecting."
PLAINTEXT_DISALLOWED = "Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
NO_USER = "No user name given; send USER first."
TLS_ACTIVE = "TLS is already active."
STLS_UNAVAILABLE = "STLS is not available on this connection."
BEGIN_TLS = "Begin TLS negotiation now."
UNSUPPORTED_MECHANISM = "Unsupported authentication mechanism."
AUTH_CANCELLED = "Authentication cancelled."
AUTH_MALFORMED = "Invalid base64 or SASL message."
LOGGED_IN = "Logged in."
LOGOUT = "Logging out."
LOGOUT_DELETED = "Logging out, messages deleted."
UTF8_ENABLED = "UTF8 enabled."
NAME_NOT_UTF8 = "User name is not valid UTF-8."
CREDENTIAL_NOT_UTF8 = "Password is not valid UTF-8."
