#!/usr/bin/env python3
"""Fuzz the PROXY protocol parser, v1 and v2 (HAProxy's proxy-protocol.txt sections 2.1, 2.2).

Input: one octet choosing the v2 cap, two octets seeding a chunking, then the first bytes of
a connection.  Properties checked, beyond "no crash":

- :class:`ProxyParser` raises nothing but :class:`ProxyProtocolError`, and gives the same
  outcome (the same header, an error, or "need more") whatever the chunking: whole, seeded
  pieces, one octet at a time;
- it never consumes bytes beyond the header: ``rest`` is exactly what followed the header's
  ``length`` octets; one octet fewer is never a complete header; and a reader that reads only
  ``wanted`` octets at a time gets the header having read exactly ``length`` octets;
- a header stays within its cap (107 octets for v1, ``max_v2`` for v2) and says what its bytes
  say: the v1 line or the v2 address block written back from it gives the same header,
  ports are 0..65535, addresses canonical IPv4/IPv6 text of the family's version, and
  ``source`` is None exactly for ``UNKNOWN``, ``LOCAL`` and ``AF_UNSPEC``.

Run: ``python fuzz/fuzz_proxy.py fuzz/corpus/proxy -runs=N`` (see docs/fuzzing.md).
"""

from __future__ import annotations

import ipaddress
import struct

from _harness import Reader, chunkings, main

from mailslot.server.proxy import (
    DEFAULT_MAX_V2,
    V1_MAX,
    V2_FIXED,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyParser,
    ProxyProtocolError,
)

_ERROR = "error"


def max_v2_of(octet: int) -> int:
    """The v2 cap: the default for most inputs, else a small one (16..79) to hit the cap."""
    return DEFAULT_MAX_V2 if octet >= 64 else V2_FIXED + octet


def outcome(pieces: list[bytes], max_v2: int) -> tuple[ProxyHeader | str | None, bytes]:
    """Feed ``pieces``; the header (or "error", or None) and the rest after the header."""
    parser = ProxyParser(max_v2=max_v2)
    header = None
    for piece in pieces:
        try:
            got = parser.feed(piece)
        except ProxyProtocolError:
            return _ERROR, b""
        if header is not None:
            assert got == header, "the header changed after it was complete"
        header = got
    return header, parser.rest


def read_wanted(data: bytes, max_v2: int) -> None:
    """Read as the listener may: only ``wanted`` octets at a time; never past the header."""
    parser = ProxyParser(max_v2=max_v2)
    position = 0
    while position < len(data):
        wanted = parser.wanted
        assert wanted >= 1
        piece = data[position : position + wanted]
        position += len(piece)
        try:
            header = parser.feed(piece)
        except ProxyProtocolError:
            return
        if header is not None:
            assert parser.rest == b"", "read past the header while reading only what was wanted"
            assert position == header.length
            assert parser.wanted == 0
            return


def _check_endpoint(text: str, port: int, version: int) -> None:
    address = ipaddress.ip_address(text)
    assert address.version == version and str(address) == text
    assert 0 <= port <= 65535


def check_header(header: ProxyHeader, data: bytes, max_v2: int) -> None:
    """What the header says agrees with the octets it was read from."""
    raw = data[: header.length]
    assert (header.source is None) == (header.destination is None)
    if header.version == 1:
        assert header.length <= V1_MAX and raw.endswith(b"\r\n")
        assert (header.source is None) == (header.command == "UNKNOWN")
        if header.source is None:
            assert raw.startswith(b"PROXY UNKNOWN")
            return
        assert header.destination is not None
        family = raw.split(b" ")[1]
        version = 4 if family == b"TCP4" else 6
        _check_endpoint(*header.source, version)
        _check_endpoint(*header.destination, version)
        line = (
            f"PROXY TCP{version} {header.source.host} {header.destination.host} "
            f"{header.source.port} {header.destination.port}\r\n"
        ).encode()
        if version == 4:
            assert line == raw, (line, raw)  # IPv4 text has one spelling
        again = ProxyParser().feed(line)
        assert again == ProxyHeader(1, "PROXY", header.source, header.destination, len(line))
        return
    assert header.length <= max_v2 and raw.startswith(V2_SIGNATURE)
    assert header.length == V2_FIXED + int.from_bytes(raw[14:16], "big")
    if header.command == "LOCAL":
        assert raw[12] == 0x20 and header.source is None
        return
    assert raw[12] == 0x21
    if header.source is None:
        assert raw[13] == 0x00
        return
    assert header.destination is not None
    version = 4 if raw[13] == 0x11 else 6
    assert raw[13] == (0x11 if version == 4 else 0x21)
    _check_endpoint(*header.source, version)
    _check_endpoint(*header.destination, version)
    layout = struct.Struct("!4s4sHH" if version == 4 else "!16s16sHH")
    block = layout.pack(
        ipaddress.ip_address(header.source.host).packed,
        ipaddress.ip_address(header.destination.host).packed,
        header.source.port,
        header.destination.port,
    )
    assert raw[V2_FIXED : V2_FIXED + layout.size] == block


def check(data: bytes) -> None:
    """The property function: see the module docstring."""
    reader = Reader(data)
    max_v2 = max_v2_of(reader.byte())
    seed = reader.uint(2)
    stream = reader.rest()
    results = [outcome(pieces, max_v2) for pieces in chunkings(stream, seed)]
    assert all(result == results[0] for result in results), results
    header, rest = results[0]
    read_wanted(stream, max_v2)
    if not isinstance(header, ProxyHeader):
        return
    assert rest == stream[header.length :]
    assert outcome([stream[: header.length]], max_v2) == (header, b"")
    assert outcome([stream[: header.length - 1]], max_v2)[0] is None
    check_header(header, stream, max_v2)


if __name__ == "__main__":
    main(check)
