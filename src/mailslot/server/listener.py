"""Listening sockets for POP3: implicit TLS (RFC 8314 section 3.3), STLS (RFC 2595), plain.

The listener accepts connections itself rather than through ``loop.create_server()``: each
takes a slot from the connection limits the moment it is accepted, and one over a limit is
answered ``-ERR [SYS/TEMP]`` (RFC 3206 section 4; a plain close on implicit TLS) and closed
there, before a transport or a protocol exists for it; refusals are logged a line per address
and window (:class:`~mailslot.server.limits.RefusalLog`).  Out of descriptors (EMFILE,
ENFILE), it logs that, at most once a window, and stops accepting for a moment, leaving the
waiting connections queued: uvloop (libuv) would silently accept and close every queued
connection, whoever it came from, and asyncio logs each failure.

Accepted, a connection becomes a :class:`~mailslot.server.session.Session`.  With
``proxy_protocol``, a HAProxy PROXY header (:mod:`mailslot.server.proxy`) comes first,
before the greeting or the TLS ClientHello; until it arrives the connection counts against
the proxy's address, then the client address it carries stands for the peer in the limits,
the failure penalty and the log; a connection without a valid header is closed with one log
line and nothing sent.  The whole login phase (header, TLS handshake, commands until a
successful login) ends ``[limits] login_timeout`` after the accept, however slowly the
client keeps sending.

Shutdown stops accepting at once, lets running sessions finish until a deadline, then
cancels the rest (which deletes nothing: only a completed QUIT commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import ipaddress
import logging
import math
import os
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, cast

from mailslot.config import ListenerConfig
from mailslot.log import escape
from mailslot.protocol.connection import CoreConfig
from mailslot.protocol.responses import Code, err
from mailslot.server.limits import RefusalLog
from mailslot.server.proxy import ProxyHeader, ProxyParser, ProxyProtocolError
from mailslot.server.session import (
    Session,
    SessionContext,
    format_address,
    handshake_timeout,
    proxy_refused,
)

logger = logging.getLogger("mailslot.listener")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BACKLOG = 1024  # pending connections per listening socket, before the workers accept them
# Connections accepted per readiness event, as asyncio does, so that a flood does not keep
# the loop from the sessions it already has.
_ACCEPT_BATCH = 64
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY = 0.1  # seconds without accepting after EMFILE/ENFILE
_EXHAUSTED_LOG_WINDOW = 10.0  # at most one EMFILE/ENFILE line per listener this often


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
        announce: bool = True,
    ) -> None:
        """``sock``: an already listening socket (:func:`listening_socket`) to accept from, else
        :meth:`start` binds one.  ``announce``: log "listening" (one worker of several does)."""
        self.config = config
        self._announce = announce
        self._trusted = (
            tuple(ipaddress.ip_network(n, strict=False) for n in config.proxy_trusted_networks)
            if config.proxy_protocol and config.proxy_trusted_networks
            else None
        )
        self._context = dataclasses.replace(
            context,
            label=config.tls,
            proxy_protocol=config.proxy_protocol,
            refusals=RefusalLog(logger),
        )
        self._sock = sock
        self._accepting = False
        self._family = socket.AF_INET
        self._kind = socket.SOCK_STREAM
        self._retry: asyncio.TimerHandle | None = None
        self._exhausted = 0  # EMFILE/ENFILE on accept since the last such log line
        self._exhausted_logged = -math.inf
        self._handshakes: set[asyncio.Task[None]] = set()

    @staticmethod
    def core_config(config: ListenerConfig, base: CoreConfig) -> CoreConfig:
        """The core's view of this listener: whether TLS is on from the start or offered."""
        return dataclasses.replace(
            base,
            tls_active=config.tls == "implicit",
            starttls_available=config.tls == "starttls",
        )

    async def start(self) -> None:
        loop = self._context.loop = asyncio.get_running_loop()
        if self._sock is None:
            self._sock = listening_socket(self.config)
        self._family, self._kind = self._sock.family, self._sock.type
        self._accepting = True
        loop.add_reader(self._sock.fileno(), self._accept)
        # Pre-forked workers share the socket: one of them says so for all.
        (logger.info if self._announce else logger.debug)(
            "listening: pop3 %s tls=%s",
            format_address(self._sock.getsockname()),
            self.config.tls,
        )

    @property
    def sessions(self) -> Iterable[Session]:
        """The open connections (for the admin socket: ``mailslot who``, ``kick``)."""
        return self._context.sessions.keys()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,) if self._sock is not None and self._sock.fileno() >= 0 else ()

    def _accept(self) -> None:
        """Accept what is queued, up to a batch: count each connection or refuse it at once."""
        listening = self._sock
        assert listening is not None
        context = self._context
        limits = context.limits
        implicit = self.config.tls == "implicit"
        trusted = self._trusted
        family, kind = self._family, self._kind
        for _ in range(_ACCEPT_BATCH):
            try:
                # socket.accept() without its socket object: a refused connection needs none,
                # and an accepted one gets it below without accept()'s family and type
                # look-ups (socket.accept() itself calls _accept()).
                fd, peer = listening._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors(exc)
                    return
                # ECONNABORTED and the like: that client is gone; the next may not be.
                logger.debug("accept failed: %s", exc)
                continue
            address = str(peer[0])
            if trusted is not None and not _trusted(address, trusted):
                # A PROXY header claims an address; only the proxies may claim one.
                context.refusals.refused(address, "not a trusted proxy")
                os.close(fd)
                continue
            refusal = limits.acquire_connection(address)
            if refusal is not None:
                # Refused before a transport or protocol exists: a flood costs an accept,
                # a write and a close per connection.
                context.refusals.refused(address, refusal)
                if not implicit:
                    refusal_reply = err(refusal.capitalize() + ".", Code.SYS_TEMP)
                    # A new socket's empty send buffer takes the line without blocking.
                    with contextlib.suppress(OSError):
                        os.write(fd, refusal_reply)
                os.close(fd)
                continue
            factory: Callable[[], asyncio.Protocol]
            if implicit:
                factory = functools.partial(_AwaitingHandshake, self._handshake, address)
            else:
                factory = functools.partial(Session, context, address=address)
            _connect(context, factory, socket.socket(family, kind, 0, fd), address)

    def _out_of_descriptors(self, exc: OSError) -> None:
        """EMFILE or ENFILE: log it (once a window) and retry in a moment.

        The queued connections stay queued rather than being accepted and dropped; they are
        served as soon as descriptors are free.  Not retrying at once is what keeps the loop
        from spinning on a listening socket that stays readable.
        """
        self._exhausted += 1
        loop = self._context.loop
        now = loop.time()
        if now >= self._exhausted_logged + _EXHAUSTED_LOG_WINDOW:
            logger.warning(
                "cannot accept on %s: %s (failed accepts since the last such line: %d); "
                "accepting again in %gs",
                format_address(self._sock.getsockname() if self._sock else None),
                escape(exc.strerror or exc),
                self._exhausted,
                _ACCEPT_RETRY,
            )
            self._exhausted = 0
            self._exhausted_logged = now
        assert self._sock is not None
        loop.remove_reader(self._sock.fileno())
        self._retry = loop.call_later(_ACCEPT_RETRY, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._retry = None
        if self._accepting and self._sock is not None:
            self._context.loop.add_reader(self._sock.fileno(), self._accept)

    async def _handshake(
        self, transport: asyncio.BaseTransport, waiting: _AwaitingHandshake
    ) -> None:
        """RFC 8314 section 3.3: TLS from the first byte, then the session as usual.

        The handshake is run here rather than by the listening socket so that the context
        can be swapped on reload and a failed handshake is logged as one line.  The PROXY
        header and the handshake are part of the login phase: they end by its deadline, and
        the session's commands get only what is left of it.
        """
        context = self._context
        loop = context.loop
        deadline = loop.time() + context.login_timeout
        task = asyncio.current_task()
        assert task is not None and context.tls is not None
        self._handshakes.add(task)
        address = waiting.address
        # Asked now, while the transport is open: uvloop's get_extra_info raises, rather than
        # answering None, once the transport has been closed (as a shutdown closes those still
        # in their handshake).
        peername = transport.get_extra_info("peername")
        counted = True  # the count is ours until the session has begun
        try:
            header: ProxyHeader | None = None
            if self.config.proxy_protocol:
                limit = min(deadline, loop.time() + context.handshake_timeout)
                try:
                    async with asyncio.timeout_at(limit):
                        header = await waiting.proxy_header()
                except (ProxyProtocolError, TimeoutError) as exc:
                    proxy_refused(peername, exc)
                    transport.abort()  # type: ignore[attr-defined]
                    return
                if header.source is not None:
                    # Count the client the header names rather than the proxy, before the
                    # handshake: a refusal costs no TLS.
                    client = str(header.source[0])
                    refusal = context.limits.move_connection(address, client)
                    if refusal is not None:
                        context.refusals.refused(client, refusal)
                        transport.abort()  # type: ignore[attr-defined]
                        return
                    address = client
            session = Session(context, header, address=address, deadline=deadline)
            handshake = asyncio.ensure_future(
                loop.start_tls(
                    cast(asyncio.WriteTransport, transport),
                    session,
                    context.tls.current,
                    server_side=True,
                    ssl_handshake_timeout=handshake_timeout(
                        context.handshake_timeout, deadline - loop.time()
                    ),
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
                peer = format_address(peername)
                reason = escape(exc) or (
                    "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                )
                if loop.time() >= deadline:
                    reason = f"login timeout: {reason}"
                logger.info("peer=%s TLS handshake failed: %s", peer, reason)
                transport.abort()  # type: ignore[attr-defined]
                return
            if tls_transport is None:  # the peer went away during the handshake
                logger.info(
                    "peer=%s TLS handshake failed: closed by the peer during the handshake",
                    format_address(peername),
                )
                return
            # start_tls() leaves connection_made to the caller.
            counted = False
            session.connection_made(tls_transport)
        finally:
            if counted:
                context.limits.release_connection(address)
            self._handshakes.discard(task)

    async def close(self, deadline: float | None, hurry: asyncio.Event | None = None) -> None:
        """Stop accepting; wait up to ``deadline`` seconds (``None``: as long as they last) for
        sessions, or until ``hurry`` is set (a second SIGTERM), then end them."""
        self._stop_accepting()
        self._context.refusals.flush()
        sessions = self._context.sessions
        if self._handshakes or sessions:
            waiting = [*self._handshakes, *(s.closed() for s in sessions)]
            await _wait_unless_hurried(waiting, deadline, hurry)
            for task in self._handshakes:
                task.cancel()
            for session in list(sessions):
                session.shut_down()
            rest = [*self._handshakes, *(s.closed() for s in sessions)]
            if rest:
                await asyncio.wait(rest, timeout=5)

    def _stop_accepting(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._sock is not None and self._sock.fileno() >= 0:
            if self._accepting:
                self._context.loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._accepting = False


def _trusted(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


async def _wait_unless_hurried(
    waiting: list[asyncio.Future[Any]], deadline: float | None, hurry: asyncio.Event | None
) -> None:
    """Wait for ``waiting`` up to ``deadline`` seconds, or until ``hurry`` is set."""
    if hurry is None:
        await asyncio.wait(waiting, timeout=deadline)
        return
    if hurry.is_set():
        return
    everything = asyncio.ensure_future(asyncio.wait(waiting))
    hurried = asyncio.ensure_future(hurry.wait())
    try:
        await asyncio.wait(
            {everything, hurried}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        everything.cancel()
        hurried.cancel()


class _AwaitingHandshake(asyncio.Protocol):
    """Holds an accepted implicit-TLS connection until the TLS layer takes it over.

    Bytes that arrive before then (the ClientHello, typically) are kept and handed to the TLS
    layer first: uvloop starts reading right after ``connection_made``, so pausing there is
    not enough, and a ClientHello read here and dropped would stall the handshake.
    """

    def __init__(
        self,
        handshake: Callable[[asyncio.BaseTransport, _AwaitingHandshake], Coroutine[Any, Any, None]],
        address: str,
    ) -> None:
        self._handshake = handshake
        self.address = address  # what the connection is counted under
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


def _connect(
    context: SessionContext,
    factory: Callable[[], asyncio.Protocol],
    sock: socket.socket,
    address: str,
) -> None:
    """Give an accepted socket a transport and a protocol from ``factory``.

    ``connect_accepted_socket()`` is a coroutine that only waits for the transport's
    ``connection_made``; it is stepped by hand, as a task would, without the task: the
    accept path is hot (thousands of logins a second).
    """
    coro = context.loop.connect_accepted_socket(factory, sock)
    _step(context, coro, address, None)


def _step(
    context: SessionContext,
    coro: Coroutine[Any, Any, object],
    address: str,
    _done: asyncio.Future[Any] | None,
) -> None:
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    except Exception as exc:
        # No protocol has begun (a transport that cannot open the socket): the count is ours.
        context.limits.release_connection(address)
        logger.warning("peer=%s cannot serve an accepted connection: %s", address, escape(exc))
        return
    # What awaiting a future yields: the future, flagged as blocking (asyncio's Task clears
    # the flag when it takes the future over, and so do we).
    waiting._asyncio_future_blocking = False
    waiting.add_done_callback(functools.partial(_step, context, coro, address))


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
