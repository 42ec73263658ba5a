"""Command lines into frozen dataclasses, one per verb (RFC 1939 sections 5-7, RFC 2449, 2595,
5034, 6856).

Verbs are case-insensitive and separated from their arguments by a single space (RFC 1939
section 3).  Message numbers are decimal, at least 1; numbers too large for any maildrop are
parsed (and later refused as "no such message") rather than rejected as syntax, so ``2^64``
gets the same reply as any other number past the end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailslot.protocol.errors import RemoteProtocolError

_NUMBER = re.compile(rb"[0-9]+")  # the line cap bounds its length
# Beyond any maildrop; keeps int() cheap and bounded while "2^64" is still "no such message".
_NUMBER_CAP = 10**20


@dataclass(frozen=True, slots=True)
class User:
    name: bytes


@dataclass(frozen=True, slots=True)
class Pass:
    password: bytes


@dataclass(frozen=True, slots=True)
class Auth:
    mechanism: str | None
    initial_response: bytes | None


@dataclass(frozen=True, slots=True)
class Stls:
    pass


@dataclass(frozen=True, slots=True)
class Capa:
    pass


@dataclass(frozen=True, slots=True)
class Utf8:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Stat:
    pass


@dataclass(frozen=True, slots=True)
class List:
    number: int | None


@dataclass(frozen=True, slots=True)
class Retr:
    number: int


@dataclass(frozen=True, slots=True)
class Dele:
    number: int


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Top:
    number: int
    lines: int


@dataclass(frozen=True, slots=True)
class Uidl:
    number: int | None


Command = (
    User
    | Pass
    | Auth
    | Stls
    | Capa
    | Utf8
    | Quit
    | Stat
    | List
    | Retr
    | Dele
    | Noop
    | Rset
    | Top
    | Uidl
)


def split_verb(line: bytes) -> tuple[str, bytes]:
    """Return the upper-cased verb and the raw argument bytes (after one space)."""
    verb, _, rest = line.partition(b" ")
    try:
        return verb.decode("ascii").upper(), rest
    except UnicodeDecodeError:
        return "", rest


def _number(arg: bytes) -> int:
    if not _NUMBER.fullmatch(arg):
        raise RemoteProtocolError("bad number")
    return min(int(arg), _NUMBER_CAP)


def _args(rest: bytes, count: int) -> list[bytes]:
    parts = rest.split(b" ") if rest else []
    if len(parts) != count:
        raise RemoteProtocolError("wrong number of arguments")
    return parts


def _optional_number(rest: bytes) -> int | None:
    return None if not rest else _number(_args(rest, 1)[0])


def _no_args(rest: bytes) -> None:
    if rest:
        raise RemoteProtocolError("unexpected argument")


def parse(verb: str, rest: bytes) -> Command:
    """Build the command for a known verb; :class:`RemoteProtocolError` on bad arguments."""
    match verb:
        case "USER":
            if not rest:
                raise RemoteProtocolError("missing user name")
            return User(rest)
        case "PASS":
            # RFC 1939 section 7: the password may contain spaces; it is the rest of the line.
            return Pass(rest)
        case "AUTH":
            if not rest:
                return Auth(None, None)
            parts = rest.split(b" ")
            if len(parts) > 2 or not parts[0]:
                raise RemoteProtocolError("bad AUTH arguments")
            try:
                mechanism = parts[0].decode("ascii").upper()
            except UnicodeDecodeError as exc:
                raise RemoteProtocolError("bad mechanism") from exc
            return Auth(mechanism, parts[1] if len(parts) == 2 else None)
        case "STLS":
            _no_args(rest)
            return Stls()
        case "CAPA":
            _no_args(rest)
            return Capa()
        case "UTF8":
            _no_args(rest)
            return Utf8()
        case "QUIT":
            _no_args(rest)
            return Quit()
        case "STAT":
            _no_args(rest)
            return Stat()
        case "NOOP":
            _no_args(rest)
            return Noop()
        case "RSET":
            _no_args(rest)
            return Rset()
        case "LIST":
            return List(_optional_number(rest))
        case "UIDL":
            return Uidl(_optional_number(rest))
        case "RETR":
            return Retr(_number(_args(rest, 1)[0]))
        case "DELE":
            return Dele(_number(_args(rest, 1)[0]))
        case "TOP":
            number, lines = _args(rest, 2)
            return Top(_number(number), _number(lines))
    raise RemoteProtocolError("unknown command")
