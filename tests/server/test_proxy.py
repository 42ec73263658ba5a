"""The HAProxy PROXY protocol (server/proxy.py and its use by the listeners).

The parser is tested byte for byte against HAProxy's ``doc/proxy-protocol.txt`` (v1 in
section 2.1, v2 in section 2.2); the headers below are built by hand from the spec, not with
the parser's own constants.  Then over a real ``mailslot serve``: a header before the greeting
(STLS listener) and before the ClientHello (implicit TLS), the proxied address in the log, the
failure penalty and the per-address limit keyed on it, and bad or missing headers closing the
connection with nothing sent.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import ipaddress
import select
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.server.conftest import InProcessFactory
from tests.server.tlsfake import FakeTcp
from tests.support.server import Listener, MailslotServer, ServerFactory
from tests.support.tls import TlsFiles
from tests.support.wire import ConnectionClosed, Pop3Wire

from mailslot.config import ListenerConfig
from mailslot.server import proxy
from mailslot.server.proxy import Endpoint, ProxyHeader, ProxyParser, ProxyProtocolError, parse
from mailslot.server.tlslayer import TlsTransport
from mailslot.tls.context import server_context

SIGNATURE = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
POLL_DEADLINE = 15.0


def v2(command: int, family: int, block: bytes) -> bytes:
    """A v2 header: signature, version 2 + command, family + transport, length, block."""
    return SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


def v2_inet(source: str, sport: int, dest: str, dport: int, tlvs: bytes = b"") -> bytes:
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(dest)
    family = 0x11 if src.version == 4 else 0x21  # AF_INET/AF_INET6 over STREAM
    return v2(0x1, family, src.packed + dst.packed + struct.pack("!HH", sport, dport) + tlvs)


def v1(source: str, sport: int, dest: str, dport: int) -> bytes:
    family = "TCP4" if ipaddress.ip_address(source).version == 4 else "TCP6"
    return f"PROXY {family} {source} {dest} {sport} {dport}\r\n".encode()


# -- the parser: well-formed headers -----------------------------------------------------------


def test_v1_tcp4() -> None:
    data = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110\r\nCAPA\r\n"
    header = parse(data)
    assert header == ProxyHeader(
        1, "PROXY", Endpoint("192.0.2.1", 56324), Endpoint("198.51.100.2", 110), 45
    )
    assert data[header.length :] == b"CAPA\r\n"


def test_v1_tcp6_addresses_come_out_canonical() -> None:
    header = parse(b"PROXY TCP6 2001:DB8:0:0::1 ::ffff:192.0.2.1 0 65535\r\n")
    assert header is not None
    assert header.source == Endpoint("2001:db8::1", 0)
    assert header.destination == Endpoint("::ffff:c000:201", 65535)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN 192.0.2.1 192.0.2.2 1 2\r\n",
        # Section 2.1: the longest possible v1 header, 107 octets.
        b"PROXY UNKNOWN %s %s 65535 65535\r\n" % (b"ffff:" * 7 + b"ffff", b"ffff:" * 7 + b"ffff"),
    ],
)
def test_v1_unknown_means_the_real_peer(line: bytes) -> None:
    assert len(line) <= 107
    header = parse(line + b"rest")
    assert header == ProxyHeader(1, "UNKNOWN", None, None, len(line))


def test_v1_longest_header_is_107_octets_and_one_more_is_refused() -> None:
    longest = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(longest) == 107
    assert parse(longest) is not None
    with pytest.raises(ProxyProtocolError, match="107"):
        parse(b"PROXY UNKNOWN " + b"x" * (107 - 15) + b"\r\n")
    # Refused at 107 octets without a line end, without waiting for one.
    with pytest.raises(ProxyProtocolError, match="107"):
        parse(b"PROXY UNKNOWN " + b"x" * (107 - 14))
    assert parse(b"PROXY UNKNOWN " + b"x" * (107 - 15)) is None


def test_v2_proxy_inet() -> None:
    data = v2_inet("192.0.2.1", 40000, "198.51.100.2", 995) + b"\x16\x03\x01"
    header = parse(data)
    assert header == ProxyHeader(
        2, "PROXY", Endpoint("192.0.2.1", 40000), Endpoint("198.51.100.2", 995), 28
    )
    assert data[header.length :] == b"\x16\x03\x01"


def test_v2_proxy_inet6() -> None:
    header = parse(v2_inet("2001:db8::7", 1, "2001:db8::8", 110))
    assert header == ProxyHeader(
        2, "PROXY", Endpoint("2001:db8::7", 1), Endpoint("2001:db8::8", 110), 16 + 36
    )


def test_v2_tlvs_are_skipped() -> None:
    # PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY and a NOOP, as HAProxy may send them.
    tlvs = b"\x01\x00\x04pop3" + b"\x02\x00\x09localhost" + b"\x04\x00\x02\x00\x00"
    data = v2_inet("192.0.2.1", 1, "192.0.2.2", 2, tlvs) + b"CAPA\r\n"
    header = parse(data)
    assert header is not None and header.source == Endpoint("192.0.2.1", 1)
    assert data[header.length :] == b"CAPA\r\n"


@pytest.mark.parametrize(
    "block",
    [
        b"",
        bytes(12),
        ipaddress.ip_address("192.0.2.1").packed * 2 + struct.pack("!HH", 1, 2),
    ],
)
@pytest.mark.parametrize("family", [0x00, 0x11, 0x21, 0x31])
def test_v2_local_means_the_real_peer_whatever_follows(block: bytes, family: int) -> None:
    # Section 2.2: LOCAL (health checks) keeps the real endpoints and ignores the block.
    header = parse(v2(0x0, family, block) + b"rest")
    assert header == ProxyHeader(2, "LOCAL", None, None, 16 + len(block))


# What Debian's HAProxy 2.6 sends first on a health check with `send-proxy-v2` and
# `check-send-proxy` (captured from a listening socket): LOCAL, AF_UNSPEC, no address block.
HAPROXY_CHECK = SIGNATURE + b"\x20\x00\x00\x00"


def test_haproxys_health_check_header_is_local_and_leaves_the_client_hello() -> None:
    parser = ProxyParser()
    header = None
    for octet in HAPROXY_CHECK:  # as slowly as the network may deliver it
        assert parser.wanted >= 1
        header = parser.feed(bytes([octet]))
    assert header == ProxyHeader(2, "LOCAL", None, None, 16)
    assert parser.wanted == 0
    parser.feed(b"\x16\x03\x01")  # the health check's TLS ClientHello follows
    assert parser.rest == b"\x16\x03\x01"


def test_v2_proxy_with_af_unspec_means_the_real_peer() -> None:
    assert parse(v2(0x1, 0x00, b"")) == ProxyHeader(2, "PROXY", None, None, 16)


# -- the parser: feeding -----------------------------------------------------------------------

VALID = [
    v1("192.0.2.1", 56324, "198.51.100.2", 110),
    v1("2001:db8::1", 1, "2001:db8::2", 2),
    b"PROXY UNKNOWN\r\n",
    v2_inet("192.0.2.1", 40000, "198.51.100.2", 995),
    v2_inet("2001:db8::1", 1, "2001:db8::2", 2, b"\x04\x00\x03abc"),
    v2(0x0, 0x00, b""),
]


@pytest.mark.parametrize("header", VALID)
def test_byte_by_byte_gives_need_more_until_the_last_octet(header: bytes) -> None:
    parser = ProxyParser()
    for octet in header[:-1]:
        assert parser.feed(bytes([octet])) is None
        assert parser.rest == b""
    result = parser.feed(header[-1:])
    assert result is not None and result.length == len(header)
    assert parser.rest == b""
    assert parser.wanted == 0


@pytest.mark.parametrize("header", VALID)
def test_bytes_after_the_header_are_returned(header: bytes) -> None:
    parser = ProxyParser()
    result = parser.feed(header + b"\x16\x03\x01\x02\x00")
    assert result is not None and result.length == len(header)
    assert parser.rest == b"\x16\x03\x01\x02\x00"
    # Bytes fed after completion join the rest; the header stays what it was.
    assert parser.feed(b"more") is result
    assert parser.rest == b"\x16\x03\x01\x02\x00more"


@given(
    header=st.sampled_from(VALID),
    rest=st.binary(min_size=1, max_size=64),
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=20),
)
def test_any_split_gives_the_same_header_and_rest(
    header: bytes, rest: bytes, cuts: list[int]
) -> None:
    data = header + rest
    parser = ProxyParser()
    result = None
    position = 0
    for size in [*cuts, len(data)]:
        result = parser.feed(data[position : position + size])
        position += size
        if position >= len(data):
            break
    assert result == parse(header)
    assert parser.rest == data[len(header) : position]


@pytest.mark.parametrize("header", VALID)
def test_reading_only_what_is_wanted_never_takes_a_session_byte(header: bytes) -> None:
    stream = header + b"USER alice\r\n"
    parser = ProxyParser()
    position = 0
    while (wanted := parser.wanted) > 0:
        assert position + wanted <= len(header), "wanted reaches past the header"
        parser.feed(stream[position : position + wanted])
        position += wanted
    assert parser.header is not None and position == len(header)
    assert parser.rest == b""


# -- the parser: malformed headers -------------------------------------------------------------

BAD_V1 = [
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n",  # LF without CR
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\r\n",
    b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n",
    b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n",
    b"PROXY TCP4 192.0.2.1\t192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\x00\r\n",
    b"PROXY\r\n",
    b"PROXY \r\n",
    b"PROXY TCP4\r\n",
    b"PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n",
    b"PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 256.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 localhost 192.0.2.2 1 2\r\n",
    b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 +1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 0x10\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 100000\r\n",
    "PROXY TCP4 192.0.2.1 192.0.2.2 1 \u0661\r\n".encode(),  # a non-ASCII digit
]

BAD_V2 = [
    SIGNATURE[:-1] + b"\x0b" + bytes([0x21, 0x11]) + struct.pack("!H", 12) + bytes(12),
    SIGNATURE + bytes([0x11, 0x11]) + struct.pack("!H", 12) + bytes(12),  # version 1
    SIGNATURE + bytes([0x31, 0x11]) + struct.pack("!H", 12) + bytes(12),  # version 3
    v2(0x2, 0x11, bytes(12)),  # command 2
    v2(0xF, 0x11, bytes(12)),
    v2(0x1, 0x12, bytes(12)),  # AF_INET over DGRAM
    v2(0x1, 0x22, bytes(36)),  # AF_INET6 over DGRAM
    v2(0x1, 0x10, bytes(12)),  # AF_INET, transport unspecified
    v2(0x1, 0x31, bytes(216)),  # AF_UNIX
    v2(0x1, 0x41, bytes(12)),  # no such family
    v2(0x1, 0x11, bytes(11)),  # address block too short for IPv4
    v2(0x1, 0x21, bytes(35)),  # ... and for IPv6
    v2(0x1, 0x21, bytes(12)),
]

GARBAGE = [
    b"USER alice\r\n",
    b"CAPA\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    b"proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXYTCP4 192.0.2.1 192.0.2.2 1 2\r\n",
    b"\r\n\r\n\x00\r\nQUIT\r",
    b"GET / HTTP/1.1\r\n",
]


@pytest.mark.parametrize("data", BAD_V1 + BAD_V2 + GARBAGE)
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)
    with pytest.raises(ProxyProtocolError):
        parse(data + b"USER alice\r\n")  # what follows never rescues a bad header


@pytest.mark.parametrize("data", BAD_V1 + BAD_V2 + GARBAGE)
def test_malformed_headers_are_refused_byte_by_byte_too(data: bytes) -> None:
    parser = ProxyParser()
    with pytest.raises(ProxyProtocolError):
        for octet in data:
            parser.feed(bytes([octet]))
    assert parser.header is None


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_is_refused_at_the_first_octet_that_cannot_be_a_header(data: bytes) -> None:
    first_bad = next(
        i
        for i in range(1, len(data) + 1)
        if not (b"PROXY ".startswith(data[:i]) or SIGNATURE.startswith(data[:i]))
    )
    assert parse(data[: first_bad - 1]) is None
    with pytest.raises(ProxyProtocolError, match="not a PROXY protocol header"):
        parse(data[:first_bad])


def test_v2_over_the_cap_is_refused_before_its_body_arrives() -> None:
    fixed = SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 4096 - 16 + 1)
    with pytest.raises(ProxyProtocolError, match="4096"):
        parse(fixed)
    # Exactly at the cap: accepted once complete.
    tlvs = b"\x04" + struct.pack("!H", 4096 - 16 - 12 - 3) + bytes(4096 - 16 - 12 - 3)
    at_cap = v2_inet("192.0.2.1", 1, "192.0.2.2", 2, tlvs)
    assert len(at_cap) == 4096
    assert parse(at_cap[:-1]) is None
    assert parse(at_cap) is not None
    # The spec's own maximum (16 + 65535) is refused too; a smaller cap can be chosen.
    with pytest.raises(ProxyProtocolError):
        parse(SIGNATURE + bytes([0x21, 0x11]) + b"\xff\xff")
    with pytest.raises(ProxyProtocolError, match="64"):
        ProxyParser(max_v2=64).feed(v2_inet("192.0.2.1", 1, "192.0.2.2", 2, bytes(40)))


def test_v2_bad_version_is_refused_on_the_thirteenth_octet() -> None:
    with pytest.raises(ProxyProtocolError, match="version"):
        parse(SIGNATURE + b"\x11")


def test_empty_input_needs_more() -> None:
    parser = ProxyParser()
    assert parser.feed(b"") is None
    assert parser.wanted == 1


def test_the_parser_module_is_pure() -> None:
    tree = ast.parse(Path(proxy.__file__).read_text("utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "ipaddress", "struct", "dataclasses", "typing"}, imported


# -- the TLS layer's header phase, without sockets ---------------------------------------------


def _header_phase(
    tls_files: TlsFiles,
) -> tuple[TlsTransport, FakeTcp, list[ProxyHeader], list[BaseException | None]]:
    headers: list[ProxyHeader] = []
    ended: list[BaseException | None] = []

    def on_header(_: TlsTransport, header: ProxyHeader) -> bool:
        headers.append(header)
        return True

    server = server_context(tls_files.certificate, tls_files.private_key)
    tls = TlsTransport(
        asyncio.get_running_loop(),
        server,
        lambda _, error: ended.append(error),
        10.0,
        asyncio.get_running_loop().time() + 10.0,
        proxy=ProxyParser(),
        on_header=on_header,
    )
    tcp = FakeTcp()
    tls.connection_made(tcp)  # type: ignore[arg-type]
    return tls, tcp, headers, ended


def _client_hello(tls_files: TlsFiles) -> bytes:
    out = ssl.MemoryBIO()
    client = tls_files.client_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return out.read()


def test_implicit_tls_header_is_taken_from_the_first_bytes_and_the_hello_follows(
    tls_files: TlsFiles,
) -> None:
    header = v2_inet("2001:db8::5", 5555, "2001:db8::6", 995)
    hello = _client_hello(tls_files)

    async def scenario() -> None:
        tls, tcp, headers, ended = _header_phase(tls_files)
        tls.data_received(header[:20])
        assert not headers and not tcp.written
        tls.data_received(header[20:] + hello)
        (got,) = headers
        assert got.source == Endpoint("2001:db8::5", 5555)
        # The ClientHello behind the header went to OpenSSL: the server's flight, one write.
        assert len(tcp.written) == 1 and tcp.written[0][:1] == b"\x16"
        assert not ended and not tcp.closed
        tls.abort()

    asyncio.run(scenario())


@pytest.mark.parametrize("end", ["eof", "reset"])
def test_implicit_tls_header_cut_short_by_the_peer_is_refused(
    tls_files: TlsFiles, end: str
) -> None:
    async def scenario() -> list[BaseException | None]:
        tls, _, headers, ended = _header_phase(tls_files)
        tls.data_received(b"PROXY TCP4 ")
        if end == "eof":
            assert tls.eof_received() is False  # the TCP transport closes
        else:
            tls.connection_lost(ConnectionResetError())
        assert not headers and tls.reading_header
        return ended

    (error,) = asyncio.run(scenario())
    assert isinstance(error, ProxyProtocolError) and "closed" in str(error)


def test_implicit_tls_without_a_header_is_refused_at_the_client_hello(
    tls_files: TlsFiles,
) -> None:
    async def scenario() -> tuple[list[BaseException | None], FakeTcp]:
        tls, tcp, _, ended = _header_phase(tls_files)
        tls.data_received(_client_hello(tls_files))
        return ended, tcp

    (error,), tcp = asyncio.run(scenario())
    assert isinstance(error, ProxyProtocolError) and "not a PROXY" in str(error)
    assert tcp.closed and not tcp.written  # nothing sent


# -- over a real server ------------------------------------------------------------------------

PROXIED = [
    pytest.param(v1("203.0.113.7", 4242, "127.0.0.1", 110), "203.0.113.7:4242", id="v1-tcp4"),
    pytest.param(v1("2001:db8::7", 4243, "::1", 110), "[2001:db8::7]:4243", id="v1-tcp6"),
    pytest.param(v2_inet("203.0.113.8", 4244, "127.0.0.1", 110), "203.0.113.8:4244", id="v2-inet"),
    pytest.param(
        v2_inet("2001:db8::8", 4245, "::1", 110, b"\x04\x00\x01\x00"),
        "[2001:db8::8]:4245",
        id="v2-inet6-tlv",
    ),
    pytest.param(b"PROXY UNKNOWN\r\n", "127.0.0.1:", id="v1-unknown"),
    pytest.param(v2(0x0, 0x00, b""), "127.0.0.1:", id="v2-local"),
]


def proxied_wire(
    server: MailslotServer, tls: str, header: bytes, *, together: bool = False
) -> Pop3Wire:
    """Connect as a proxy would: the header, then POP3 (STLS) or TLS from the first byte.

    ``together``: the header and the ClientHello leave in one ``send``.
    """
    host, port = server.listener(tls)
    wire = Pop3Wire(host, port, read_greeting=False)
    if tls == "implicit":
        if together:
            wire.sock = _GluedFirstSend(wire.sock, header)  # type: ignore[assignment]
        else:
            wire.send(header)
        wire.start_tls(server.tls_files.client_context())
    else:
        wire.send(header)
    wire.greeting = wire.line()
    return wire


class _GluedFirstSend:
    """A socket whose first ``sendall`` carries ``prefix`` in front of its data."""

    def __init__(self, sock: socket.socket, prefix: bytes) -> None:
        self._sock = sock
        self._prefix = prefix

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(self._prefix + data)
        self._prefix = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.fixture
def proxied(mailslot_factory: ServerFactory) -> MailslotServer:
    return mailslot_factory(
        listeners=[
            Listener("starttls", proxy_protocol=True),
            Listener("implicit", proxy_protocol=True),
        ],
        limits={"login_timeout": 3.0},
    )


@pytest.mark.parametrize(("header", "peer"), PROXIED)
def test_header_before_the_greeting_then_stls_and_login(
    proxied: MailslotServer, header: bytes, peer: str
) -> None:
    with proxied_wire(proxied, "starttls", header) as wire:
        assert wire.greeting.startswith(b"+OK")
        assert wire.command("STLS").startswith(b"+OK")
        wire.start_tls(proxied.tls_files.client_context())
        wire.login("alice", proxied.password("alice"))
        assert wire.command("QUIT").startswith(b"+OK")
    (line,) = proxied.wait_for_log("login: user=alice")
    assert f"peer={peer}" in line, line
    assert " listener=starttls proxy=127.0.0.1:" in line, line
    session = line.split("session=")[1].split()[0]
    lines = proxied.wait_for_log(f"session={session} ", 2)
    assert "disconnect:" in lines[1], lines
    assert " listener=starttls proxy=127.0.0.1:" in lines[1], lines


@pytest.mark.parametrize("together", [False, True], ids=["apart", "with-client-hello"])
@pytest.mark.parametrize(("header", "peer"), PROXIED)
def test_header_before_the_client_hello_then_login(
    proxied: MailslotServer, header: bytes, peer: str, together: bool
) -> None:
    with proxied_wire(proxied, "implicit", header, together=together) as wire:
        assert wire.greeting.startswith(b"+OK")
        wire.login("alice", proxied.password("alice"))
        assert wire.command("QUIT").startswith(b"+OK")
    (line,) = proxied.wait_for_log("login: user=alice")
    assert f"peer={peer}" in line, line


@pytest.mark.parametrize("split", [3, None], ids=["header-in-two-parts", "header-with-commands"])
def test_header_and_the_first_commands_in_any_segments(
    proxied: MailslotServer, split: int | None
) -> None:
    """What follows the header in the same segment is the session's, never lost or re-read."""
    header = v2_inet("198.51.100.40", 4000, "127.0.0.1", 110)
    host, port = proxied.listener("starttls")
    with Pop3Wire(host, port, read_greeting=False) as wire:
        if split is None:
            wire.send(header + b"CAPA\r\nNOOP\r\n")
        else:
            wire.send(header[:split])
            time.sleep(0.05)
            wire.send(header[split:] + b"CAPA\r\nNOOP\r\n")
        assert wire.line().startswith(b"+OK")
        capa = wire.multiline()
        assert b"STLS" in capa, capa
        assert wire.line().startswith(b"-ERR"), "NOOP before login is refused, and answered"
    proxied.wait_for_log("peer=198.51.100.40:4000 disconnect:")


def _fail_login(wire: Pop3Wire) -> bytes:
    assert wire.command("USER alice").startswith(b"+OK")
    return wire.command("PASS wrong-password")


def test_failure_penalty_is_per_proxied_address(mailslot_factory: ServerFactory) -> None:
    """Both connections come from 127.0.0.1; only the proxied addresses tell them apart.

    A's second failure waits 2 x 1.5 s.  B's first failure, sent after it, waits 1.5 s and
    so answers first; were the penalty keyed on the real peer, B's would be the third failure
    from 127.0.0.1 and wait 6 s, after A's.
    """
    delay = 1.5
    server = mailslot_factory(
        listeners=[Listener("starttls", proxy_protocol=True)],
        allow_plaintext=True,
        failure_delay=delay,
        failure_delay_max=30.0,
    )
    a_header = v1("198.51.100.10", 1000, "127.0.0.1", 110)
    b_header = v2_inet("198.51.100.20", 2000, "127.0.0.1", 110)
    with proxied_wire(server, "starttls", a_header) as a:
        assert _fail_login(a).startswith(b"-ERR [AUTH]")
        assert a.command("USER alice").startswith(b"+OK")
        started = time.monotonic()
        a.send(b"PASS wrong-password\r\n")
        with proxied_wire(server, "starttls", b_header) as b:
            assert _fail_login(b).startswith(b"-ERR [AUTH]")
            readable, _, _ = select.select([a.sock], [], [], 0)
            assert readable == [], "A's second failure was answered before B's first"
            b.login("alice", server.password("alice"))
            assert b.command("QUIT").startswith(b"+OK")
        assert a.line().startswith(b"-ERR [AUTH]")
        assert time.monotonic() - started >= 2 * delay  # a lower bound on a configured delay
    failures = server.wait_for_log("login failed: user=alice", 3)
    assert sum("peer=198.51.100.10:1000 " in line for line in failures) == 2
    assert sum("peer=198.51.100.20:2000 " in line for line in failures) == 1


def test_failure_penalty_counts_the_proxied_address_not_the_proxy(
    inprocess: InProcessFactory,
) -> None:
    server = inprocess(
        listeners=(
            ListenerConfig(address="127.0.0.1", port=0, tls="starttls", proxy_protocol=True),
        ),
        auth={"allow_plaintext_without_tls": True},
    )
    host, port = server.address()
    penalty = server.app.listeners[0]._context.penalty
    for header in (v1("192.0.2.33", 1, "127.0.0.1", 110), v2(0x0, 0x11, bytes(12))):
        with Pop3Wire(host, port, read_greeting=False) as wire:
            wire.send(header)
            assert wire.line().startswith(b"+OK")
            assert _fail_login(wire).startswith(b"-ERR [AUTH]")
    assert penalty.strikes("192.0.2.33") == 1
    assert penalty.strikes("127.0.0.1") == 1  # the LOCAL header: the real peer


def test_connection_limit_is_per_proxied_address(mailslot_factory: ServerFactory) -> None:
    server = mailslot_factory(
        listeners=[Listener("starttls", proxy_protocol=True)],
        limits={"max_connections_per_ip": 2},
    )
    first = v1("198.51.100.30", 1, "127.0.0.1", 110)
    second = v2_inet("198.51.100.31", 2, "127.0.0.1", 110)
    held = [proxied_wire(server, "starttls", first) for _ in range(2)]
    try:
        for wire in held:
            assert wire.greeting.startswith(b"+OK"), wire.greeting
        # A third from the same proxied address is refused ...
        with proxied_wire(server, "starttls", first) as extra:
            assert extra.greeting.startswith(b"-ERR [SYS/TEMP]"), extra.greeting
            assert extra.read_until_eof() == b""
        # ... while others from the same real peer (127.0.0.1, already at 3) are served.
        others = [proxied_wire(server, "starttls", second) for _ in range(2)]
        for wire in others:
            assert wire.greeting.startswith(b"+OK"), wire.greeting
            wire.close()
        assert held[0].command("CAPA").startswith(b"+OK")
    finally:
        for wire in held:
            wire.close()
    (refused,) = server.wait_for_log("refused: too many connections from your address")
    assert "peer=198.51.100.30 " in refused, refused


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"USER alice\r\n", id="pop3-command"),
        pytest.param(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 99999\r\n", id="bad-port"),
        pytest.param(SIGNATURE + b"\x21\x31\x00\x00", id="v2-unix"),
        pytest.param(b"PROXY " + b"A" * 200, id="too-long"),
    ],
)
@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_garbage_header_closes_with_nothing_sent(
    proxied: MailslotServer, tls: str, garbage: bytes
) -> None:
    with Pop3Wire(*proxied.listener(tls), read_greeting=False) as wire:
        wire.send(garbage)
        assert wire.read_until_eof() == b""
    (line,) = proxied.wait_for_log("PROXY header refused")
    peer = line.split("peer=")[1].split()[0]
    assert peer.startswith("127.0.0.1:"), line
    # No session was made for it: no greeting, no session log lines.
    assert f"peer={peer} " not in proxied.log().replace(line, "")


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_header_cut_short_closes_with_one_log_line(proxied: MailslotServer, tls: str) -> None:
    # A half-close ends the wait at once (not after the login or handshake timeout).
    with Pop3Wire(*proxied.listener(tls), read_greeting=False) as wire:
        wire.send(b"PROXY TCP4 192.0.2.1 ")
        wire.sock.shutdown(socket.SHUT_WR)
        assert wire.read_until_eof() == b""
    (line,) = proxied.wait_for_log("PROXY header refused")
    assert "closed before a complete header" in line, line


def test_header_cut_short_by_a_reset_logs_one_line_and_no_session(
    proxied: MailslotServer,
) -> None:
    wire = Pop3Wire(*proxied.starttls, read_greeting=False)
    wire.send(b"PROXY TCP4 192.0.2.1 ")
    time.sleep(0.1)  # the server has read the partial header
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wire.close()  # RST, no FIN
    (line,) = proxied.wait_for_log("PROXY header refused")
    assert "connection lost" in line, line
    peer = line.split("peer=")[1].split()[0]
    assert f"peer={peer} " not in proxied.log().replace(line, "")  # no session lines


def test_no_header_closes_after_the_login_timeout_with_nothing_sent(
    proxied: MailslotServer,
) -> None:
    with Pop3Wire(*proxied.starttls, read_greeting=False) as wire:
        assert wire.read_until_eof() == b""  # the socket timeout (30 s) is only a safety net
    (line,) = proxied.wait_for_log("PROXY header refused")
    assert "no complete header in time" in line, line


def test_client_hello_without_a_header_fails_the_handshake(proxied: MailslotServer) -> None:
    with (
        Pop3Wire(*proxied.implicit, read_greeting=False) as wire,
        pytest.raises(ConnectionClosed),
    ):
        wire.start_tls(proxied.tls_files.client_context())
    (line,) = proxied.wait_for_log("PROXY header refused")
    assert "not a PROXY protocol header" in line, line


def test_listeners_without_proxy_protocol_are_unchanged(mailslot: MailslotServer) -> None:
    # A header sent to an ordinary listener is just a bad command.
    with Pop3Wire(*mailslot.starttls) as wire:
        assert wire.greeting.startswith(b"+OK")
        reply = wire.command(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2")
        assert reply.startswith(b"-ERR"), reply
    assert "PROXY header" not in mailslot.log()


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_a_peer_outside_proxy_trusted_networks_is_closed_unread(
    mailslot_factory: ServerFactory, tls: str
) -> None:
    # The server's start-up probe (a PROXY UNKNOWN header from 127.0.0.1) passes: trusted.
    server = mailslot_factory(
        listeners=[Listener(tls, proxy_protocol=True, proxy_trusted_networks=("127.0.0.1/32",))]
    )
    host, port = server.listener(tls)
    # From 127.0.0.2 even a well-formed header claiming another client is never read.
    with socket.create_connection((host, port), source_address=("127.0.0.2", 0)) as sock:
        sock.settimeout(POLL_DEADLINE)
        sock.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 110\r\n")
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                received += chunk
    assert received == b""
    (line,) = server.wait_for_log("refused: not a trusted proxy")
    assert "peer=127.0.0.2" in line, line
    # The trusted proxy's header is taken as before.
    with proxied_wire(server, tls, b"PROXY TCP4 192.0.2.1 192.0.2.2 1 110\r\n") as wire:
        assert wire.greeting.startswith(b"+OK"), wire.greeting
    assert "192.0.2.1" not in line
