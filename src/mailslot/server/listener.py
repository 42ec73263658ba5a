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
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from mailslot.config import ListenerConfig
from mailslot.log import escape
from mailslot.protocol.connection import CoreConfig
from mailslot.protocol.responses import Code, err
from mailslot.server.limits import RefusalLog
from mailslot.server.proxy import ProxyHeader, ProxyParser
from mailslot.server.session import (
    Session,
    SessionContext,
    format_address,
    proxy_refused,
)
from mailslot.server.tlslayer import TlsTransport

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
        self._handshakes: set[_ImplicitTls] = set()  # implicit TLS, before the session

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
                factory = functools.partial(self._implicit_tls, address)
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

    def _implicit_tls(self, address: str) -> _ImplicitTls:
        """RFC 8314 section 3.3: TLS from the first byte (after a PROXY header, if configured).

        The TLS layer is made here rather than by the listening socket so that the context
        can be swapped on reload and a failed handshake is logged as one line.  The PROXY
        header and the handshake are part of the login phase: each has ``[tls]
        handshake_timeout``, both end by the login deadline, and the session's commands get
        only what is left of it.
        """
        context = self._context
        assert context.tls is not None
        deadline = context.loop.time() + context.login_timeout
        proxy = self.config.proxy_protocol
        tls = _ImplicitTls(
            context.loop,
            context.tls.current,
            self._handshaken,
            context.handshake_timeout,
            deadline,
            proxy=ProxyParser() if proxy else None,
            on_header=self._header if proxy else None,
        )
        tls.address = address
        tls.header = None
        self._handshakes.add(tls)
        return tls

    def _header(self, tls: TlsTransport, header: ProxyHeader) -> bool:
        """A PROXY header before the ClientHello: count the client it names from now on,
        before the handshake, so that a refusal costs no TLS."""
        assert isinstance(tls, _ImplicitTls)
        tls.header = header
        if header.source is None:
            return True
        client = str(header.source[0])
        context = self._context
        refusal = context.limits.move_connection(tls.address, client)
        if refusal is not None:
            context.refusals.refused(client, refusal)
            # move_connection() counted nothing new; the proxy's count is released below.
            return False
        tls.address = client
        return True

    def _handshaken(self, tls: TlsTransport, error: BaseException | None) -> None:
        """The handshake ended: begin the session, or log why not and drop the count."""
        assert isinstance(tls, _ImplicitTls)
        self._handshakes.discard(tls)
        context = self._context
        if error is None:
            session = Session(context, tls.header, address=tls.address, deadline=tls.deadline)
            tls.set_protocol(session)
            session.connection_made(tls)  # the greeting leaves with the session tickets
            return
        context.limits.release_connection(tls.address)
        if isinstance(error, ConnectionRefusedError):
            return  # over a limit once the PROXY header named the client: logged as such
        try:
            peer: object = tls.get_extra_info("peername")
        except Exception:  # uvloop: the transport is closed already
            peer = tls.address
        if tls.reading_header:
            proxy_refused(peer, error if isinstance(error, Exception) else ConnectionError())
            return
        reason = escape(error) or type(error).__name__
        if context.loop.time() >= tls.deadline:
            reason = f"login timeout: {reason}"
        logger.info("peer=%s TLS handshake failed: %s", format_address(peer), reason)

    async def close(self, deadline: float | None, hurry: asyncio.Event | None = None) -> None:
        """Stop accepting; wait up to ``deadline`` seconds (``None``: as long as they last) for
        sessions, or until ``hurry`` is set (a second SIGTERM), then end them."""
        self._stop_accepting()
        self._context.refusals.flush()
        sessions = self._context.sessions
        if self._handshakes or sessions:
            waiting = [
                *(tls.handshake_ended() for tls in self._handshakes),
                *(s.closed() for s in sessions),
            ]
            await _wait_unless_hurried(waiting, deadline, hurry)
            for tls in list(self._handshakes):
                tls.cancel_handshake()
            for session in list(sessions):
                session.shut_down()
            rest = [s.closed() for s in sessions]
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


class _ImplicitTls(TlsTransport):
    """An implicit-TLS connection and what its listener keeps for it until the session."""

    __slots__ = ("address", "header")

    address: str  # what the connection is counted under
    header: ProxyHeader | None

    @property
    def deadline(self) -> float:
        """The end of the login phase (loop time), from the accept."""
        return self._deadline


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
