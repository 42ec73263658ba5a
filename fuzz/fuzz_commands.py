#!/usr/bin/env python3
"""Fuzz the command-line framing and the command parser (RFC 1939 section 3, RFC 2449 section 4).

Input: one octet choosing the line cap, two octets seeding a chunking, then the bytes a client
sends.  Properties checked, beyond "no crash":

- :class:`LineBuffer` hands out the same lines whatever the chunking (whole, seeded pieces,
  one octet at a time), and they are those of a reference split written differently: a line
  whose octets with its LF exceed the cap is one ``TOO_LONG``, else it loses one trailing CR;
- after ``next_line`` answers "incomplete", fewer octets than the cap are buffered (memory stays
  bounded however long a line the client sends);
- :func:`split_verb` and :func:`parse` raise nothing but :class:`RemoteProtocolError`, build the
  dataclass of the verb, accept numbers only as ASCII digits, and a parsed command written back
  as a line parses to the same command (any letter case of the verb).

Run: ``python fuzz/fuzz_commands.py fuzz/corpus/commands -runs=N`` (see docs/fuzzing.md).
"""

from __future__ import annotations

import re

from _harness import Reader, chunkings, main

from mailslot.protocol import commands as cmd
from mailslot.protocol.errors import RemoteProtocolError
from mailslot.protocol.framing import TOO_LONG, LineBuffer
from mailslot.protocol.state import KNOWN_VERBS

_NUMBER_CAP = 10**20
_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")
_DIGITS = re.compile(rb"[0-9]+")

_NO_ARGS = {
    "STLS": cmd.Stls,
    "CAPA": cmd.Capa,
    "UTF8": cmd.Utf8,
    "QUIT": cmd.Quit,
    "STAT": cmd.Stat,
    "NOOP": cmd.Noop,
    "RSET": cmd.Rset,
}
_TYPES: dict[str, type] = {
    **_NO_ARGS,
    "USER": cmd.User,
    "PASS": cmd.Pass,
    "AUTH": cmd.Auth,
    "LIST": cmd.List,
    "UIDL": cmd.Uidl,
    "RETR": cmd.Retr,
    "DELE": cmd.Dele,
    "TOP": cmd.Top,
}


def limit_of(octet: int) -> int:
    """The line cap for this input: RFC 2449's 255 for half the inputs, else 1..128."""
    return 255 if octet >= 128 else octet + 1


def reference_lines(stream: bytes, limit: int) -> list[bytes | object]:
    """Lines as the framing should hand them out, complete ones only, plus the pending cut."""
    out: list[bytes | object] = []
    for segment in _LINE.findall(stream):
        if not segment.endswith(b"\n"):
            # The incomplete last line: reported once as soon as it cannot fit.
            if len(segment) >= limit:
                out.append(TOO_LONG)
        elif len(segment) > limit:
            out.append(TOO_LONG)
        else:
            line = segment[:-1]
            out.append(line[:-1] if line.endswith(b"\r") else line)
    return out


def framed_lines(pieces: list[bytes], limit: int) -> list[bytes | object]:
    """Feed ``pieces`` to a LineBuffer, taking every line after each piece."""
    buffer = LineBuffer()
    out: list[bytes | object] = []
    for piece in pieces:
        buffer.feed(piece)
        while (line := buffer.next_line(limit)) is not None:
            out.append(line)
        assert len(buffer) < limit, f"{len(buffer)} octets buffered over a cap of {limit}"
    return out


def _number_text(number: int) -> bytes:
    return str(number).encode()


def unparse(command: cmd.Command) -> bytes:
    """The command line (without CRLF) a client would send for ``command``."""
    match command:
        case cmd.User(name=name):
            return b"USER " + name
        case cmd.Pass(password=password):
            return b"PASS " + password
        case cmd.Auth(mechanism=None):
            return b"AUTH"
        case cmd.Auth(mechanism=str() as mechanism, initial_response=None):
            return b"AUTH " + mechanism.encode()
        case cmd.Auth(mechanism=str() as mechanism, initial_response=bytes() as initial):
            return b"AUTH " + mechanism.encode() + b" " + initial
        case cmd.List(number=None) | cmd.Uidl(number=None):
            return type(command).__name__.upper().encode()
        case cmd.List(number=int() as n) | cmd.Uidl(number=int() as n):
            return type(command).__name__.upper().encode() + b" " + _number_text(n)
        case cmd.Retr(number=n) | cmd.Dele(number=n):
            return type(command).__name__.upper().encode() + b" " + _number_text(n)
        case cmd.Top(number=n, lines=lines):
            return b"TOP " + _number_text(n) + b" " + _number_text(lines)
    return type(command).__name__.upper().encode()


def check_command(line: bytes) -> None:
    """Split and parse one command line; check what comes out."""
    verb, rest = cmd.split_verb(line)
    head, _, tail = line.partition(b" ")
    assert rest == tail
    assert verb == "" or verb.encode("ascii") == head.upper(), (line, verb)
    if verb not in KNOWN_VERBS:
        return
    try:
        command = cmd.parse(verb, rest)
    except RemoteProtocolError:
        return
    assert type(command) is _TYPES[verb], (verb, command)
    if verb in _NO_ARGS:
        assert rest == b""
    numbers = [getattr(command, field, None) for field in ("number", "lines")]
    arguments = rest.split(b" ") if rest else []
    for number in numbers:
        if number is not None:
            assert 0 <= number <= _NUMBER_CAP
    if verb in ("RETR", "DELE", "TOP", "LIST", "UIDL"):
        assert all(_DIGITS.fullmatch(a) for a in arguments), (verb, rest)
        given = [n for n in numbers if n is not None]
        assert given == [min(int(a), _NUMBER_CAP) for a in arguments]
    # Written back, in any letter case, the line parses to the same command.
    again_verb, space, again_rest = unparse(command).partition(b" ")
    for variant in (again_verb, again_verb.lower(), again_verb.swapcase()):
        written = variant + space + again_rest
        reparsed = cmd.parse(*cmd.split_verb(written))
        assert reparsed == command, (line, written, reparsed, command)


def check(data: bytes) -> None:
    """The property function: see the module docstring."""
    reader = Reader(data)
    limit = limit_of(reader.byte())
    seed = reader.uint(2)
    stream = reader.rest()
    expected = reference_lines(stream, limit)
    for pieces in chunkings(stream, seed):
        got = framed_lines(pieces, limit)
        assert got == expected, (limit, pieces, got, expected)
    for line in expected:
        if isinstance(line, bytes):
            check_command(line)


if __name__ == "__main__":
    main(check)
