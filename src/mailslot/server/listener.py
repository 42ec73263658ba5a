"""Listening sockets for POP3: implicit TLS (RFC 8314 section 3.3), STLS (RFC 2595), plain.

Each accepted connection first takes a slot from the connection limits, then becomes a
:class:`~mailslot.server.session.Session`.  With ``proxy_protocol``, a HAProxy PROXY header
(:mod:`mailslot.server.proxy`) comes first, before the greeting or the TLS ClientHello, and
the client address it carries stands for the peer in the limits, the failure penalty and
the log; a connection without a valid header is closed with one log line and nothing sent.

Shutdown stops accepting at once, lets running sessions finish until a deadline, then
cancels the rest (which deletes nothing: only a completed QUIT commits).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

from mailslot.config import ListenerConfig
from mailslot.log import escape
from mailslot.protocol.connection import CoreConfig
from mailslot.server.proxy import ProxyHeader, ProxyParser, ProxyProtocolError
from mailslot.server.session import Session, SessionContext

logger = logging.getLogger("mailslot.listener")


class Pop3Listener:
    """One ``[[listener]]`` with ``protocol = "pop3"``."""

    def __init__(
        self, config: ListenerConfig, context: SessionContext, *, reuse_port: bool = False
    ) -> None:
        self.config = config
        self._context = context
        self._reuse_port = reuse_port
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @staticmethod
    def core_config(config: ListenerConfig, base: CoreConfig) -> CoreConfig:
        """The core's view of this listener: whether TLS is on from the start or offered."""
        return CoreConfig(
            tls_active=config.tls == "implicit",
            starttls_available=config.tls == "starttls",
            allow_plaintext=base.allow_plaintext,
            line_length=base.line_length,
            sasl_line_length=base.sasl_line_length,
            max_bad_commands_before_login=base.max_bad_commands_before_login,
            max_bad_commands=base.max_bad_commands,
            greeting=base.greeting,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {
            "reuse_address": True,
            "reuse_port": self._reuse_port or None,
            "backlog": 1024,
        }
        if self.config.tls == "implicit":
            self._server = await loop.create_server(
                lambda: _AwaitingHandshake(self._handshake),
                self.config.address,
                self.config.port,
                **options,
            )
        else:
            # What asyncio.start_server() does, with the lighter protocol below.
            def factory() -> asyncio.StreamReaderProtocol:
                reader = asyncio.StreamReader(limit=self._stream_limit, loop=loop)
                return _StreamProtocol(reader, self._accept, loop=loop)

            self._server = await loop.create_server(
                factory, self.config.address, self.config.port, **options
            )
        for sock in self._server.sockets:
            logger.info(
                "listening: pop3 %s tls=%s", format_address(sock.getsockname()), self.config.tls
            )

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server else ()

    @property
    def _stream_limit(self) -> int:
        return self._context.core.sasl_line_length * 2

    async def _handshake(
        self, transport: asyncio.BaseTransport, waiting: _AwaitingHandshake
    ) -> None:
        """RFC 8314 section 3.3: TLS from the first byte, then the session as usual.

        The handshake is run here rather than by the listening socket so that the context
        can be swapped on reload and a failed handshake is logged as one line.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None and self._context.tls is not None
        self._sessions.add(task)
        try:
            header: ProxyHeader | None = None
            if self.config.proxy_protocol:
                try:
                    async with asyncio.timeout(self._context.handshake_timeout):
                        header = await waiting.proxy_header()
                except (ProxyProtocolError, TimeoutError) as exc:
                    _proxy_refused(transport.get_extra_info("peername"), exc)
                    transport.abort()  # type: ignore[attr-defined]
                    return
            reader = asyncio.StreamReader(limit=self._stream_limit, loop=loop)
            protocol = _StreamProtocol(reader, loop=loop)
            handshake = asyncio.ensure_future(
                loop.start_tls(
                    cast(asyncio.WriteTransport, transport),
                    protocol,
                    self._context.tls.current,
                    server_side=True,
                    ssl_handshake_timeout=self._context.handshake_timeout,
                )
            )
            try:
                # start_tls() puts its TLS protocol on the transport and schedules its
                # connection_made and resume_reading before its first await; early bytes are
                # fed right after those, in the same batch of callbacks, so before any newer
                # bytes can be read.
                await asyncio.sleep(0)
                if waiting.closed:
                    # Until start_tls() took over, the peer's FIN went to `waiting`; the TLS
                    # layer would wait the whole handshake timeout for bytes that never come
                    # (and hold shutdown that long).
                    handshake.cancel()
                    raise ConnectionResetError("closed by the peer before the handshake")
                if waiting.early:
                    loop.call_soon(_feed_early_data, transport, bytes(waiting.early))
                    waiting.early.clear()
                tls_transport = await handshake
            except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
                peer = format_address(transport.get_extra_info("peername"))
                reason = escape(exc) or (
                    "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                )
                logger.info("peer=%s TLS handshake failed: %s", peer, reason)
                transport.abort()  # type: ignore[attr-defined]
                return
            if tls_transport is None:  # the peer went away during the handshake
                return
            # start_tls() leaves connection_made to the caller (as StreamWriter.start_tls does).
            protocol.connection_made(tls_transport)
            writer = asyncio.StreamWriter(tls_transport, protocol, reader, loop)
            await self._accept(reader, writer, header)
        finally:
            self._sessions.discard(task)

    async def _accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        header: ProxyHeader | None = None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        peer = writer.get_extra_info("peername")
        via = ""
        if self.config.proxy_protocol:
            if header is None:  # plain and STLS listeners; implicit TLS took it in _handshake
                try:
                    async with asyncio.timeout(self._context.login_timeout):
                        header = await read_proxy_header(reader)
                except (ProxyProtocolError, TimeoutError, OSError) as exc:
                    _proxy_refused(peer, exc)
                    writer.transport.abort()
                    self._sessions.discard(task)
                    return
            via = f" proxy={format_address(peer)} header=v{header.version}/{header.command}"
            peer = header.source or peer
        address = str(peer[0]) if peer else "unknown"
        limits = self._context.limits
        refusal = limits.acquire_connection(address)
        try:
            session = Session(reader, writer, self._context, address, format_address(peer))
            if refusal is not None:
                session.log.info("refused: %s", refusal)
                await session.refuse(refusal.capitalize() + ".")
                return
            try:
                session.log.info("connect: listener=%s%s", self.config.tls, via)
                await session.run()
            finally:
                limits.release_connection(address)
        finally:
            self._sessions.discard(task)

    async def close(self, deadline: float) -> None:
        """Stop accepting; wait up to ``deadline`` seconds for sessions, then cancel them."""
        if self._server is not None:
            self._server.close()
        if self._sessions:
            _, pending = await asyncio.wait(set(self._sessions), timeout=deadline)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()


class _StreamProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, without its deque of drain waiters.

    An empty ``collections.deque`` takes ~760 bytes (one 64-slot block), a tenth of an idle
    session.  The waiters (one per pending ``drain()``: ours awaits one at a time) are only
    appended, removed and iterated, which a list does alike in ~56 bytes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        waiters = getattr(self, "_drain_waiters", None)
        if isinstance(waiters, collections.deque) and not waiters:
            self._drain_waiters: list[asyncio.Future[None]] = []


class _AwaitingHandshake(asyncio.Protocol):
    """Holds an accepted implicit-TLS connection until the TLS layer takes it over.

    Bytes that arrive before then (the ClientHello, typically) are kept and handed to the TLS
    layer first: uvloop starts reading right after ``connection_made``, so pausing there is
    not enough, and a ClientHello read here and dropped would stall the handshake.
    """

    def __init__(
        self,
        handshake: Callable[[asyncio.BaseTransport, _AwaitingHandshake], Coroutine[Any, Any, None]],
    ) -> None:
        self._handshake = handshake
        self._transport: asyncio.ReadTransport | None = None
        self.early = bytearray()
        self._more: asyncio.Future[None] | None = None
        self._lost = False
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.ReadTransport, transport)
        self._transport.pause_reading()
        asyncio.get_running_loop().create_task(self._handshake(transport, self))

    def data_received(self, data: bytes) -> None:
        self.early += data
        if self._transport is not None:
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        # Keep the transport: the handshake task closes it with one log line.
        self._eof = True
        self._wake()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wake()

    @property
    def closed(self) -> bool:
        """The peer closed or reset the connection before the TLS layer took it over."""
        return self._eof or self._lost

    def _wake(self) -> None:
        if self._more is not None and not self._more.done():
            self._more.set_result(None)

    async def proxy_header(self) -> ProxyHeader:
        """Take a PROXY header off the front of the early bytes, reading more while needed.

        What follows the header (the ClientHello, or part of it) stays in :attr:`early`.
        """
        parser = ProxyParser()
        while True:
            header = parser.feed(bytes(self.early))
            self.early.clear()
            if header is not None:
                self.early += parser.rest
                return header
            if self.closed or self._transport is None:
                raise ProxyProtocolError("connection closed before a complete header")
            self._more = asyncio.get_running_loop().create_future()
            self._transport.resume_reading()
            try:
                await self._more
            finally:
                self._more = None


def _feed_early_data(transport: asyncio.BaseTransport, data: bytes) -> None:
    """Give bytes read before the TLS protocol existed to it, ahead of anything newer."""
    protocol: Any = transport.get_protocol()
    # Both asyncio's and uvloop's TLS protocols are buffered protocols; uvloop's does not
    # inherit from asyncio.BufferedProtocol, hence the duck typing.
    if hasattr(protocol, "get_buffer"):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            count = min(len(buffer), len(view))
            buffer[:count] = view[:count]
            protocol.buffer_updated(count)
            view = view[count:]
    else:
        protocol.data_received(data)


async def read_proxy_header(reader: asyncio.StreamReader) -> ProxyHeader:
    """Read a PROXY header off ``reader``, never reading past its end."""
    parser = ProxyParser()
    while True:
        data = await reader.read(parser.wanted)
        if not data:
            raise ProxyProtocolError("connection closed before a complete header")
        header = parser.feed(data)
        if header is not None:
            return header


def _proxy_refused(peer: object, exc: Exception) -> None:
    if isinstance(exc, ProxyProtocolError):
        reason = escape(exc)
    elif isinstance(exc, TimeoutError):  # before OSError, of which it is a subclass
        reason = "no complete header in time"
    else:
        reason = f"connection lost: {type(exc).__name__}"
    logger.info("peer=%s PROXY header refused, closing: %s", format_address(peer), reason)


def format_address(address: object) -> str:
    """``1.2.3.4:995`` or ``[::1]:995``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
