"""The TLS layer (server/tlslayer.py) without sockets: a client ``SSLObject`` on one side, a
fake TCP transport on the other, so that what leaves in which write can be seen.

RFC 8446: the server's flight (section 2), the session tickets after the client's Finished
(section 4.6.1), ``close_notify`` both ways (section 6.1); RFC 8314 section 3.3: the greeting
follows the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import pytest
from tests.server.tlsfake import FakeTcp
from tests.support.tls import TlsFiles

from mailslot.server.tlslayer import TlsTransport
from mailslot.tls.context import server_context

GREETING = b"+OK POP3 ready\r\n"


class App(asyncio.Protocol):
    """The session's part: greets when connected, keeps what it reads, may close on QUIT."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received = b""
        self.eof = False
        self.lost: list[Exception | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if data.endswith(b"QUIT\r\n"):
            self.transport.write(b"+OK bye\r\n")
            self.transport.close()

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


class Pair:
    """A client SSLObject and a server TlsTransport wired through a FakeTcp."""

    def __init__(self, tls_files: TlsFiles, *, client: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.app = App()
        self.ended: list[BaseException | None] = []
        self.server = TlsTransport(
            loop,
            server_context(tls_files.certificate, tls_files.private_key),
            self._handshaken,
            10.0,
            loop.time() + 10.0,
        )
        self.tcp = FakeTcp()
        self.server.connection_made(self.tcp)  # type: ignore[arg-type]
        self.c_in, self.c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        context = client or tls_files.client_context()
        self.client = context.wrap_bio(self.c_in, self.c_out, server_hostname="localhost")

    def _handshaken(self, tls: TlsTransport, error: BaseException | None) -> None:
        self.ended.append(error)
        if error is None:
            tls.set_protocol(self.app)
            self.app.connection_made(tls)

    def to_server(self) -> None:
        self.server.data_received(self.c_out.read())

    def to_client(self) -> int:
        """Hand the server's writes to the client; how many writes there were."""
        writes = len(self.tcp.written)
        for data in self.tcp.written:
            self.c_in.write(data)
        self.tcp.written.clear()
        return writes

    def client_handshake(self) -> bool:
        try:
            self.client.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def handshake(self) -> None:
        assert not self.client_handshake()  # ClientHello
        self.to_server()
        assert self.to_client() == 1  # the server's whole flight in one write
        assert self.client_handshake()  # the client's Finished
        self.to_server()
        assert self.ended == [None]

    def client_read(self) -> bytes:
        data = b""
        with contextlib.suppress(ssl.SSLWantReadError):
            while True:
                chunk = self.client.read(65536)
                if not chunk:
                    break
                data += chunk
        return data


def test_the_tickets_and_the_greeting_leave_in_one_write(tls_files: TlsFiles) -> None:
    async def scenario() -> None:
        pair = Pair(tls_files)
        pair.handshake()
        assert pair.to_client() == 1  # NewSessionTicket(s) and the greeting, together
        assert pair.client_read() == GREETING
        assert pair.client.session is not None  # the tickets were in it
        assert pair.server.get_extra_info("ssl_object").version() == "TLSv1.3"
        assert pair.server.get_extra_info("peername") == ("127.0.0.1", 40000)

    asyncio.run(scenario())


def test_commands_in_one_read_reach_the_session_in_one_call_and_quit_closes_both_ways(
    tls_files: TlsFiles,
) -> None:
    async def scenario() -> None:
        pair = Pair(tls_files)
        pair.handshake()
        pair.to_client()
        pair.client_read()
        pair.client.write(b"USER alice\r\n")
        pair.client.write(b"QUIT\r\n")  # a second record in the same read
        pair.to_server()
        assert pair.app.received == b"USER alice\r\nQUIT\r\n"
        # The reply and close_notify: one write, and the socket stays open for the peer's.
        assert pair.to_client() == 1
        assert pair.client_read() == b"+OK bye\r\n"
        assert pair.server.is_closing() and not pair.tcp.closed
        with contextlib.suppress(ssl.SSLWantReadError):
            pair.client.unwrap()  # the client's close_notify
        pair.to_server()
        assert pair.tcp.closed and not pair.tcp.aborted
        pair.server.connection_lost(None)
        assert pair.app.lost == [None]

    asyncio.run(scenario())


def test_the_client_command_sent_with_its_finished_is_read(tls_files: TlsFiles) -> None:
    async def scenario() -> None:
        pair = Pair(tls_files)
        assert not pair.client_handshake()
        pair.to_server()
        pair.to_client()
        assert pair.client_handshake()
        pair.client.write(b"CAPA\r\n")  # in the same segment as the Finished
        pair.to_server()
        assert pair.ended == [None]
        assert pair.app.received == b"CAPA\r\n"

    asyncio.run(scenario())


def test_a_peer_close_notify_is_the_session_eof_then_the_transport_closes(
    tls_files: TlsFiles,
) -> None:
    async def scenario() -> None:
        pair = Pair(tls_files)
        pair.handshake()
        pair.to_client()
        pair.client_read()
        with contextlib.suppress(ssl.SSLWantReadError):
            pair.client.unwrap()
        pair.to_server()
        assert pair.app.eof
        assert pair.to_client() == 1  # our close_notify
        assert pair.tcp.closed

    asyncio.run(scenario())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning")
def test_a_failed_handshake_sends_the_alert_closes_and_says_why(tls_files: TlsFiles) -> None:
    old = tls_files.client_context()
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")

    async def scenario() -> None:
        pair = Pair(tls_files, client=old)
        assert not pair.client_handshake()
        pair.to_server()
        (error,) = pair.ended
        assert isinstance(error, ssl.SSLError)
        assert pair.tcp.closed
        assert pair.to_client() == 1  # protocol_version alert
        try:
            pair.client_handshake()
        except ssl.SSLError as exc:
            assert "VERSION" in str(exc).upper()
        else:
            raise AssertionError("the client's handshake went on")
        assert pair.app.lost == []  # no session was ever connected

    asyncio.run(scenario())


def test_a_silent_peer_times_out_at_the_deadline(tls_files: TlsFiles) -> None:
    async def scenario() -> list[BaseException | None]:
        loop = asyncio.get_running_loop()
        ended: list[BaseException | None] = []
        tls = TlsTransport(
            loop,
            server_context(tls_files.certificate, tls_files.private_key),
            lambda _, error: ended.append(error),
            10.0,
            loop.time() + 0.01,  # the login deadline comes before the handshake timeout
        )
        tcp = FakeTcp()
        tls.connection_made(tcp)  # type: ignore[arg-type]
        await tls.handshake_ended()
        assert tcp.closed
        return ended

    (error,) = asyncio.run(scenario())
    assert isinstance(error, TimeoutError)


def test_reading_paused_by_the_session_holds_the_plaintext_until_resumed(
    tls_files: TlsFiles,
) -> None:
    async def scenario() -> None:
        pair = Pair(tls_files)
        pair.handshake()
        pair.server.pause_reading()
        assert not pair.tcp.reading
        pair.client.write(b"NOOP\r\n")
        pair.to_server()
        assert pair.app.received == b""
        pair.server.resume_reading()
        await asyncio.sleep(0)
        assert pair.app.received == b"NOOP\r\n"

    asyncio.run(scenario())


def test_a_forged_record_after_the_handshake_drops_the_connection(tls_files: TlsFiles) -> None:
    async def scenario() -> None:
        pair = Pair(tls_files)
        pair.handshake()
        pair.to_client()
        pair.server.data_received(b"\x17\x03\x03\x00\x20" + bytes(32))  # no valid AEAD tag
        assert pair.tcp.closed
        assert pair.app.received == b""
        assert pair.to_client() == 1  # bad_record_mac
        with pytest.raises(ssl.SSLError, match=r"BAD_RECORD_MAC|bad record mac"):
            pair.client_read()
        pair.server.connection_lost(None)
        assert pair.app.lost == [None]

    asyncio.run(scenario())
