"""The HAProxy PROXY protocol, versions 1 and 2, as a pure incremental parser.

Specification: "The PROXY protocol, Versions 1 & 2" (HAProxy's ``doc/proxy-protocol.txt``):
section 2.1 (the human-readable header, v1), section 2.2 (the binary header, v2) and
section 2.2's note that TLVs may follow the addresses.  A proxy sends the header once, as the
very first bytes of a connection, before any byte of the session (for implicit TLS, before
the ClientHello).

:class:`ProxyParser` takes bytes as they come and answers "need more" (``None``), a
:class:`ProxyHeader`, or raises :class:`ProxyProtocolError`.  It never takes more than the
header: :attr:`ProxyParser.rest` is what followed it, and :attr:`ProxyParser.wanted` says how
many bytes can still be read without reading past it.  Only the standard library is used; no
I/O happens here.

Accepted: v1 ``TCP4``, ``TCP6`` and ``UNKNOWN``; v2 ``LOCAL`` (any family), and ``PROXY`` over
``AF_INET``/``AF_INET6`` with ``STREAM`` or ``AF_UNSPEC`` (TLVs skipped).  A header whose
source is not usable (``LOCAL``, ``UNKNOWN``, ``AF_UNSPEC``) has ``source is None``: the caller
uses the real peer.  Anything else, including UDP and Unix-socket sources, is an error.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal, NamedTuple

V1_PREFIX = b"PROXY "
V1_MAX = 107  # section 2.1: the longest v1 header, CRLF included
V1_MIN = len(b"PROXY UNKNOWN\r\n")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # section 2.2, twelve octets
V2_FIXED = 16  # signature, version/command, family/transport, length
DEFAULT_MAX_V2 = 4096  # the spec allows 16 + 65535; nothing a POP3 proxy sends comes close

_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_AF_UNSPEC, _AF_INET, _AF_INET6 = 0x00, 0x10, 0x20
_STREAM = 0x01
_INET_BLOCK = struct.Struct("!4s4sHH")
_INET6_BLOCK = struct.Struct("!16s16sHH")


class ProxyProtocolError(Exception):
    """The bytes are not a well-formed PROXY header; the connection must be closed."""


class Endpoint(NamedTuple):
    """An IP address (as text, in its canonical form) and a port."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a complete header says.

    ``source`` and ``destination`` are None for v1 ``UNKNOWN``, v2 ``LOCAL`` and v2 ``PROXY``
    with ``AF_UNSPEC``: the connection's real endpoints apply (sections 2.1 and 2.2).
    """

    version: Literal[1, 2]
    command: Literal["PROXY", "LOCAL", "UNKNOWN"]
    source: Endpoint | None
    destination: Endpoint | None
    length: int  # octets the header occupied on the wire


class ProxyParser:
    """Feed bytes until a header is complete; bounded by ``max_v2`` (v2) and 107 octets (v1)."""

    def __init__(self, *, max_v2: int = DEFAULT_MAX_V2) -> None:
        if max_v2 < V2_FIXED:
            raise ValueError("max_v2 must leave room for the 16-octet v2 header")
        self._max_v2 = max_v2
        self._buffer = bytearray()
        self.header: ProxyHeader | None = None

    def feed(self, data: bytes) -> ProxyHeader | None:
        """Add ``data``; return the header once complete, ``None`` while more is needed.

        Raises :class:`ProxyProtocolError` as soon as the bytes cannot start or be a header.
        Once a header is returned, further bytes are kept in :attr:`rest`.
        """
        self._buffer += data
        if self.header is not None:
            return self.header
        header = parse(self._buffer, max_v2=self._max_v2)
        if header is not None:
            self.header = header
        return header

    @property
    def rest(self) -> bytes:
        """The bytes fed after the header (the session's); empty until the header is done."""
        if self.header is None:
            return b""
        return bytes(self._buffer[self.header.length :])

    @property
    def wanted(self) -> int:
        """How many more octets belong to the header for certain (0 once it is complete).

        Reading at most this many never takes bytes of the session that follows.
        """
        if self.header is not None:
            return 0
        buffer = self._buffer
        if not buffer:
            return 1
        if buffer[0] == V1_PREFIX[0]:
            return max(1, V1_MIN - len(buffer))
        if len(buffer) < V2_FIXED:
            return V2_FIXED - len(buffer)
        length = int.from_bytes(buffer[14:16], "big")
        return max(1, V2_FIXED + length - len(buffer))


def parse(data: bytes | bytearray, *, max_v2: int = DEFAULT_MAX_V2) -> ProxyHeader | None:
    """Parse a header at the start of ``data``: the header, ``None`` for "need more", or raise.

    ``data`` may hold bytes after the header; the header's ``length`` says where they start.
    """
    if not data:
        return None
    if data[0] == V1_PREFIX[0]:
        if not _could_be(data, V1_PREFIX):
            raise ProxyProtocolError("not a PROXY protocol header")
        return _parse_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        if not _could_be(data, V2_SIGNATURE):
            raise ProxyProtocolError("not a PROXY protocol header")
        return _parse_v2(data, max_v2)
    raise ProxyProtocolError("not a PROXY protocol header")


def _could_be(data: bytes | bytearray, prefix: bytes) -> bool:
    count = min(len(data), len(prefix))
    return data[:count] == prefix[:count]


# -- version 1 (section 2.1) -----------------------------------------------------------------


def _parse_v1(data: bytes | bytearray) -> ProxyHeader | None:
    end = data.find(b"\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError("v1 header longer than 107 octets")
        if b"\r" in data[:-1] or any(not 0x20 <= b < 0x7F for b in data if b != 0x0D):
            raise ProxyProtocolError("v1 header with a control character")
        return None
    if end == 0 or data[end - 1] != 0x0D:
        raise ProxyProtocolError("v1 header not ended by CRLF")
    line = bytes(data[: end - 1])
    if any(not 0x20 <= b < 0x7F for b in line):
        raise ProxyProtocolError("v1 header with a control character")
    length = end + 1
    parts = line.split(b" ")
    if parts[1:2] == [b"UNKNOWN"]:
        # Section 2.1: with UNKNOWN, the rest of the line is to be ignored.
        return ProxyHeader(1, "UNKNOWN", None, None, length)
    if len(parts) != 6:
        raise ProxyProtocolError("v1 header needs 6 fields")
    _, family, source, destination, source_port, destination_port = parts
    if family == b"TCP4":
        version = 4
    elif family == b"TCP6":
        version = 6
    else:
        raise ProxyProtocolError("v1 protocol is not TCP4, TCP6 or UNKNOWN")
    return ProxyHeader(
        1,
        "PROXY",
        Endpoint(_v1_address(source, version), _v1_port(source_port)),
        Endpoint(_v1_address(destination, version), _v1_port(destination_port)),
        length,
    )


def _v1_address(text: bytes, version: int) -> str:
    value = text.decode("ascii")
    if "%" in value:  # a scope id has no meaning on the far side of a proxy
        raise ProxyProtocolError("v1 address with a scope id")
    try:
        address = ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
    except ValueError:
        raise ProxyProtocolError(f"v1 address is not IPv{version}") from None
    return str(address)


def _v1_port(text: bytes) -> int:
    # Decimal 0..65535 with no sign, no spaces and no leading zero.
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == 0x30):
        raise ProxyProtocolError("v1 port is not a decimal 0..65535")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError("v1 port is not a decimal 0..65535")
    return port


# -- version 2 (section 2.2) -----------------------------------------------------------------


def _parse_v2(data: bytes | bytearray, max_v2: int) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        if len(data) > 12:
            _check_v2_command(data[12])
        return None
    command_byte, family = data[12], data[13]
    length = int.from_bytes(data[14:16], "big")
    command = _check_v2_command(command_byte)
    if V2_FIXED + length > max_v2:
        raise ProxyProtocolError(f"v2 header longer than {max_v2} octets")
    if len(data) < V2_FIXED + length:
        return None
    total = V2_FIXED + length
    if command == "LOCAL":
        # Section 2.2: a LOCAL connection (e.g. a health check) keeps its real endpoints,
        # whatever family and addresses follow.
        return ProxyHeader(2, "LOCAL", None, None, total)
    block = bytes(data[V2_FIXED:total])
    if family == _AF_UNSPEC:
        return ProxyHeader(2, "PROXY", None, None, total)
    if family == _AF_INET | _STREAM:
        layout = _INET_BLOCK
    elif family == _AF_INET6 | _STREAM:
        layout = _INET6_BLOCK
    else:
        raise ProxyProtocolError(f"v2 family/transport 0x{family:02x} is not TCP over IPv4/IPv6")
    if length < layout.size:
        raise ProxyProtocolError("v2 address block shorter than its family needs")
    # Anything after the addresses is TLVs (section 2.2.7), which nothing here needs.
    source, destination, source_port, destination_port = layout.unpack_from(block)
    return ProxyHeader(
        2,
        "PROXY",
        Endpoint(str(ipaddress.ip_address(source)), source_port),
        Endpoint(str(ipaddress.ip_address(destination)), destination_port),
        total,
    )


def _check_v2_command(value: int) -> Literal["PROXY", "LOCAL"]:
    if value == _V2_PROXY:
        return "PROXY"
    if value == _V2_LOCAL:
        return "LOCAL"
    if value >> 4 != 2:
        raise ProxyProtocolError(f"v2 version {value >> 4} is not 2")
    raise ProxyProtocolError(f"v2 command {value & 0x0F} is neither LOCAL nor PROXY")
