#!/usr/bin/env python3
"""Fuzz the message pipeline: CRLF ends, TOP filter, dot-stuffing (RFC 1939 sections 3, 7, 11).

Input: one octet choosing RETR or TOP and its line count, two octets seeding a chunking, then
the stored message.  Properties checked, beyond "no crash":

- the wire bytes are the same whatever the chunking of the stored message (whole, seeded
  pieces, one octet at a time), and feeding more after TOP said it is done adds nothing;
- they end with the terminator, and ``CRLF . CRLF`` occurs nowhere before it (nor does the
  response body start with ``. CRLF``): a client can never see the message end early;
- read back as a client does (split at CRLF, drop one leading dot of each line) they give
  the stored message with CRLF line ends, a CRLF added if its last line had none; for TOP,
  the header, the blank line and that many body lines of it (a reference written with
  regular expressions, not the incremental code);
- :func:`wire_size` is the octet count of the message with CRLF line ends (section 11).

Run: ``python fuzz/fuzz_dotstuff.py fuzz/corpus/dotstuff -runs=N`` (see docs/fuzzing.md).
"""

from __future__ import annotations

import re

from _harness import Reader, chunkings, main

from mailslot.protocol.dotstuff import MessageEncoder, wire_size

_BARE_LF = re.compile(rb"(?<!\r)\n")
_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")


def to_crlf(data: bytes) -> bytes:
    """Every LF not preceded by CR becomes CRLF; nothing else changes."""
    return _BARE_LF.sub(b"\r\n", data)


def reference_top(crlf_data: bytes, lines: int) -> bytes:
    """Header, blank line and ``lines`` body lines of CRLF data (RFC 1939 section 7)."""
    out: list[bytes] = []
    in_header = True
    left = lines
    for line in _LINE.findall(crlf_data):
        if in_header:
            out.append(line)
            in_header = line != b"\r\n"
        elif left > 0:
            out.append(line)
            left -= 1
        else:
            break
    return b"".join(out)


def expected_body(message: bytes, top_lines: int | None) -> bytes:
    """What a client reads back: CRLF line ends, TOP applied, a last line end added if missing."""
    body = to_crlf(message)
    if top_lines is not None:
        body = reference_top(body, top_lines)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body


def client_read(wire: bytes) -> bytes:
    """Read a multi-line response body as a client does; assert it is well-formed."""
    assert wire.endswith(b".\r\n"), wire[-8:]
    stuffed = wire[:-3]
    assert not stuffed or stuffed.endswith(b"\r\n"), "terminator not at a line start"
    lines = stuffed.split(b"\r\n")[:-1] if stuffed else []
    read = []
    for line in lines:
        assert line != b".", "a bare dot line before the terminator"
        if line.startswith(b"."):
            read.append(line[1:])
        else:
            read.append(line)
    return b"".join(line + b"\r\n" for line in read)


def encode(pieces: list[bytes], top_lines: int | None) -> bytes:
    """Run a MessageEncoder over ``pieces`` as the connection does, and past ``done`` too."""
    encoder = MessageEncoder(top_lines)
    out = []
    for piece in pieces:
        was_done = encoder.done
        encoded = encoder.encode(piece)
        assert not (was_done and encoded), "output after TOP was done"
        out.append(encoded)
    assert top_lines is not None or not encoder.done
    out.append(encoder.finish())
    return b"".join(out)


def top_lines_of(octet: int) -> int | None:
    """RETR for half the inputs, else TOP with 0..127 body lines."""
    return None if octet >= 128 else octet


def check(data: bytes) -> None:
    """The property function: see the module docstring."""
    reader = Reader(data)
    top_lines = top_lines_of(reader.byte())
    seed = reader.uint(2)
    message = reader.rest()
    assert wire_size(message) == len(to_crlf(message))
    expected_wire: bytes | None = None
    for pieces in chunkings(message, seed):
        wire = encode(pieces, top_lines)
        if expected_wire is None:
            expected_wire = wire
            # The body must not start with the terminator, nor hold CRLF . CRLF before the end.
            assert wire == b".\r\n" or not wire.startswith(b".\r\n")
            assert wire.find(b"\r\n.\r\n") in (-1, len(wire) - 5)
            assert client_read(wire) == expected_body(message, top_lines)
        else:
            assert wire == expected_wire, (top_lines, pieces)


if __name__ == "__main__":
    main(check)
