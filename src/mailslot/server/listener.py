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
import dataclasses
import functools
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

from mailslot.config import ListenerConfig
from mailslot.log import escape
from mailslot.protocol.connection import CoreConfig
from mailslot.server.proxy import ProxyHeader, ProxyParser, ProxyProtocolError
from mailslot.server.session import Session, SessionContext, format_address, proxy_refused

logger = logging.getLogger("mailslot.listener")

BACKLOG = 1024  # pending connections per listening socket, before the workers accept them


def listening_socket(config: ListenerConfig) -> socket.socket:
    """A listening socket for ``config``'s address and port, as :meth:`Pop3Listener.start`
    would make it, for a parent to bind once before it forks the workers that accept from it
    (a TCP LMTP listener's too).

    IPv6 addresses get ``IPV6_V6ONLY``, as asyncio's own servers do: ``::`` and ``0.0.0.0``
    are two listeners.
    """
    family = socket.AF_INET6 if ":" in config.address else socket.AF_INET
    sock = socket.create_server((config.address, config.port), family=family, backlog=BACKLOG)
    sock.setblocking(False)
    return sock


class Pop3Listener:
    """One ``[[listener]]`` with ``protocol = "pop3"``."""

    def __init__(
        self,
        config: ListenerConfig,
        context: SessionContext,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        """``sock``: an already listening socket (:func:`listening_socket`) to accept from, else
        :meth:`start` binds one."""
        self.config = config
        self._context = dataclasses.replace(
            context, label=config.tls, proxy_protocol=config.proxy_protocol
        )
        self._sock = sock
        self._server: asyncio.Server | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

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
        loop = self._context.loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.Protocol]
        if self.config.tls == "implicit":
            factory = functools.partial(_AwaitingHandshake, self._handshake)
        else:
            factory = functools.partial(Session, self._context)
        if self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock, backlog=BACKLOG)
        else:
            self._server = await loop.create_server(
                factory, self.config.address, self.config.port, reuse_address=True, backlog=BACKLOG
            )
        for sock in self._server.sockets:
            logger.info(
                "listening: pop3 %s tls=%s", format_address(sock.getsockname()), self.config.tls
            )

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server else ()

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
        self._handshakes.add(task)
        try:
            header: ProxyHeader | None = None
            if self.config.proxy_protocol:
                try:
                    async with asyncio.timeout(self._context.handshake_timeout):
                        header = await waiting.proxy_header()
                except (ProxyProtocolError, TimeoutError) as exc:
                    proxy_refused(transport.get_extra_info("peername"), exc)
                    transport.abort()  # type: ignore[attr-defined]
                    return
            session = Session(self._context, header)
            handshake = asyncio.ensure_future(
                loop.start_tls(
                    cast(asyncio.WriteTransport, transport),
                    session,
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
            # start_tls() leaves connection_made to the caller.
            session.connection_made(tls_transport)
        finally:
            self._handshakes.discard(task)

    async def close(self, deadline: float | None) -> None:
        """Stop accepting; wait up to ``deadline`` seconds (``None``: as long as they last) for
        sessions, then end them."""
        if self._server is not None:
            self._server.close()
        sessions = self._context.sessions
        if self._handshakes or sessions:
            waiting = [*self._handshakes, *(s.closed() for s in sessions)]
            await asyncio.wait(waiting, timeout=deadline)
            for task in self._handshakes:
                task.cancel()
            for session in list(sessions):
                session.shut_down()
            rest = [*self._handshakes, *(s.closed() for s in sessions)]
            if rest:
                await asyncio.wait(rest, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()


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
