"""One POP3 connection: read -> core -> act -> write, in the manner of hypercorn's TCPServer.

The driver owns every timer (RFC 1939 section 3: the autologout timer of at least 10 minutes
after login; a short one before), performs what the sans-IO core asks (authentication,
opening the maildrop, streaming message bytes with back-pressure, the UPDATE commit, the STLS
handshake) and maps backend errors to the core's failure reasons.  A session that ends in any
way other than QUIT in TRANSACTION deletes nothing (RFC 1939 section 6).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import secrets
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import cast

from mailslot.auth.base import AuthenticationFailed, Authenticator, AuthError, User
from mailslot.log import SessionLogger, escape
from mailslot.protocol import events as ev
from mailslot.protocol.connection import Connection, CoreConfig
from mailslot.protocol.responses import Code, Failure, err
from mailslot.protocol.state import State
from mailslot.server.limits import Limits
from mailslot.server.penalty import FailurePenalty
from mailslot.server.tls import TlsContexts
from mailslot.store.base import (
    Maildrop,
    MaildropLocked,
    MessageGone,
    MessageInfo,
    PermanentFailure,
    Store,
    StoreError,
)

logger = logging.getLogger("mailslot.session")

# Flush when this much is queued; drain() then applies the transport's back-pressure.
_FLUSH_AT = 256 * 1024
_READ_SIZE = 65536
_CHUNK = 256 * 1024
_CLOSE_WAIT = 2.0


def session_ids() -> Iterator[str]:
    """Log ids for sessions: a random prefix per listener and worker, then a counter.

    Made once per listener, after any fork, so pre-forked workers do not share a prefix.  A
    counter costs no getrandom() per connection as a random id each would.
    """
    prefix = secrets.token_hex(3)
    return (f"{prefix}{n:x}" for n in itertools.count(1))


class _IdleTimeout(Exception):
    """Set on the stream by the session's timer when a read has waited too long."""


class ReadDeadlines:
    """The read deadlines of one listener's sessions, watched by one loop timer at a time.

    A loop timer per session costs ~580 bytes (the handle and libuv's timer), and idle
    sessions number in the tens of thousands.  Sessions wait here in buckets of
    ``resolution`` seconds; one timer fires for the earliest bucket and calls each session's
    ``_expire``.  A deadline is noticed up to one resolution late, never early.
    """

    __slots__ = ("_armed", "_buckets", "_handle", "_slots", "resolution")

    def __init__(self, resolution: float) -> None:
        self.resolution = resolution
        self._buckets: dict[int, set[Session]] = {}
        self._slots: list[int] = []  # heap of the buckets' keys
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0

    def slot(self, deadline: float) -> int:
        return math.ceil(deadline / self.resolution)

    def add(self, session: Session, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = set()
            heapq.heappush(self._slots, slot)
            if self._handle is None or slot < self._armed:
                self._arm(slot)
        bucket.add(session)

    def discard(self, session: Session, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.discard(session)  # an empty bucket is dropped when it comes due

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = slot
        self._handle = asyncio.get_running_loop().call_at(slot * self.resolution, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = asyncio.get_running_loop().time()
        while self._slots and self._slots[0] * self.resolution <= now:
            for session in self._buckets.pop(heapq.heappop(self._slots), ()):
                session._expire()
        if self._slots:
            self._arm(self._slots[0])


def _deadlines_for(login_timeout: float, idle_timeout: float) -> ReadDeadlines:
    # A tenth of the shortest timeout, at most a second: a 60 s login timeout may end up to
    # a second late, a test's 0.3 s one 30 ms late.
    return ReadDeadlines(min(1.0, min(login_timeout, idle_timeout) / 10))


@dataclass(slots=True)
class SessionContext:
    """What every session of one listener shares."""

    core: CoreConfig
    store: Store
    users: Authenticator
    penalty: FailurePenalty
    limits: Limits
    tls: TlsContexts | None
    login_timeout: float
    idle_timeout: float
    handshake_timeout: float
    ids: Iterator[str] = field(default_factory=session_ids)
    deadlines: ReadDeadlines = field(init=False)

    def __post_init__(self) -> None:
        self.deadlines = _deadlines_for(self.login_timeout, self.idle_timeout)


class Session:
    """Drives one :class:`Connection` over an asyncio stream pair."""

    __slots__ = (
        "_address",
        "_conn",
        "_context",
        "_deadline",
        "_maildrop",
        "_octets",
        "_reader",
        "_reading",
        "_retrieved",
        "_slot",
        "_user",
        "_writer",
        "log",
    )

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        context: SessionContext,
        address: str,
        peer: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._context = context
        self._address = address
        self._conn = Connection(context.core)
        self._maildrop: Maildrop | None = None
        self._user: User | None = None
        self.log = SessionLogger(logger, next(context.ids), peer)
        self._retrieved = 0
        self._octets = 0
        # The read deadline, watched by the listener's ReadDeadlines (in bucket _slot, or
        # None) and moved forward lazily, rather than a timeout per read.
        self._slot: int | None = None
        self._deadline = 0.0
        self._reading = False

    async def run(self) -> None:
        """Serve the connection until it closes; never raises for a client's doing."""
        reason = "closed"
        try:
            reason = await self._loop()
        except (ConnectionError, ssl.SSLError, TimeoutError) as exc:
            reason = f"connection lost: {type(exc).__name__}"
        except Exception:
            self.log.exception("internal error")
            reason = "internal error"
        finally:
            await self._finish(reason)

    async def refuse(self, text: str) -> None:
        """Answer a connection over a limit with ``-ERR [SYS/TEMP]`` and close it."""
        self._conn.data_to_send()  # a refused client gets no greeting, only the refusal
        self._writer.write(err(text, Code.SYS_TEMP))
        await self._finish("refused")

    async def _loop(self) -> str:
        conn = self._conn
        if conn.tls_active:
            self.log.info("TLS: %s", tls_description(self._writer))
        while True:
            event = conn.next_event()
            if event is ev.NEED_DATA:
                await self._flush()
                data = await self._read()
                if data is None:
                    self._writer.write(err("Disconnected for inactivity."))
                    return "idle timeout"
                conn.receive_data(data)
            elif isinstance(event, ev.Authenticate):
                await self._login(event)
            elif isinstance(event, ev.RetrieveMessage):
                await self._retrieve(event)
            elif isinstance(event, ev.Commit):
                await self._commit(event)
            elif isinstance(event, ev.StartTls):
                if not await self._start_tls():
                    return "TLS handshake failed"
            elif isinstance(event, ev.BadCommand):
                self.log.info("bad command: %s", escape(event.reason))
            else:
                assert isinstance(event, ev.Close)
                return event.reason

    async def _read(self) -> bytes | None:
        """The next bytes from the client; None if none came within the state's timeout."""
        timeout = (
            self._context.idle_timeout
            if self._conn.state == State.TRANSACTION
            else self._context.login_timeout
        )
        self._deadline = deadline = asyncio.get_running_loop().time() + timeout
        deadlines = self._context.deadlines
        slot = deadlines.slot(deadline)
        if self._slot is None or slot < self._slot:
            if self._slot is not None:
                deadlines.discard(self, self._slot)
            deadlines.add(self, slot)
            self._slot = slot
        self._reading = True
        try:
            return await self._reader.read(_READ_SIZE)
        except _IdleTimeout:
            return None
        finally:
            self._reading = False

    def _expire(self) -> None:
        # A read started since this timer was set has moved the deadline: wait for that one.
        # Outside a read (a login, a RETR waiting on the client's window) no timer applies.
        self._slot = None
        if not self._reading:
            return
        if asyncio.get_running_loop().time() < self._deadline:
            self._slot = self._context.deadlines.slot(self._deadline)
            self._context.deadlines.add(self, self._slot)
        else:
            self._reader.set_exception(_IdleTimeout())

    async def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    # ------------------------------------------------------------------ AUTHORIZATION

    async def _login(self, event: ev.Authenticate) -> None:
        conn = self._conn
        name = escape(event.username, 64)
        try:
            if event.authzid is not None and event.authzid != event.username:
                # No proxy authorisation: acting as another user is refused like a bad password.
                raise AuthenticationFailed
            user = await self._context.users.authenticate(event.username, event.password)
        except AuthenticationFailed:
            delay = self._context.penalty.failed(self._address)
            self.log.info("login failed: user=%s mechanism=%s", name, event.mechanism)
            if delay:
                await self._flush()
                await asyncio.sleep(delay)
            conn.login_failed(Failure.AUTH)
            return
        except AuthError:
            self.log.warning("login failed, user database unavailable: user=%s", name)
            conn.login_failed(Failure.SYS_TEMP)
            return
        if not self._context.limits.acquire_user(user.name):
            self.log.info("login refused, too many sessions: user=%s", escape(user.name))
            conn.login_failed(Failure.IN_USE)
            return
        try:
            maildrop = await self._context.store.open(user.name, user.home)
        except MaildropLocked:
            self._context.limits.release_user(user.name)
            self.log.info("login refused, maildrop in use: user=%s", escape(user.name))
            conn.login_failed(Failure.IN_USE)
            return
        except StoreError as exc:
            self._context.limits.release_user(user.name)
            self.log.error("cannot open maildrop: user=%s error=%s", escape(user.name), exc)
            permanent = isinstance(exc, PermanentFailure)
            conn.login_failed(Failure.SYS_PERM if permanent else Failure.SYS_TEMP)
            return
        self._user, self._maildrop = user, maildrop
        self._context.penalty.succeeded(self._address)
        messages = maildrop.messages
        self.log.info(
            "login: user=%s mechanism=%s messages=%d tls=%s",
            escape(user.name),
            event.mechanism,
            len(messages),
            conn.tls_active,
        )
        conn.login_succeeded(messages)

    async def _start_tls(self) -> bool:
        await self._flush()
        # RFC 2595 section 4 / CVE-2011-0411: bytes that arrived in the clear after STLS must
        # not be read as if they came through TLS.  The core checked its own buffer; this is
        # the stream's, filled while the +OK was being written.
        if self._reader._buffer:  # type: ignore[attr-defined]
            self.log.warning("data pipelined after STLS, closing")
            return False
        if not await self._handshake():
            return False
        self._conn.tls_started()
        self.log.info("STLS: %s", tls_description(self._writer))
        return True

    async def _handshake(self) -> bool:
        assert self._context.tls is not None
        try:
            await self._writer.start_tls(
                self._context.tls.current, ssl_handshake_timeout=self._context.handshake_timeout
            )
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            self.log.info("TLS handshake failed: %s", escape(exc))
            return False
        return True

    # ------------------------------------------------------------------ TRANSACTION

    async def _retrieve(self, event: ev.RetrieveMessage) -> None:
        conn = self._conn
        assert self._maildrop is not None
        message = cast(MessageInfo, event.message)
        chunks: AsyncIterator[bytes] = self._maildrop.read(message, _CHUNK)
        try:
            first = await anext(chunks, b"")
        except MessageGone:
            self.log.warning("message %d vanished: uid=%s", event.number, message.uid)
            conn.message_failed(Failure.SYS_PERM)
            return
        except StoreError as exc:
            self.log.error("cannot read message %d: %s", event.number, exc)
            conn.message_failed(Failure.SYS_TEMP)
            return
        conn.message_started()
        more = conn.message_data(first)
        try:
            while more:
                if conn.pending_output >= _FLUSH_AT:
                    await self._flush()
                chunk = await anext(chunks, None)
                if chunk is None:
                    break
                more = conn.message_data(chunk)
        except StoreError as exc:
            self.log.error("message %d failed while sending: %s", event.number, exc)
            conn.message_failed(Failure.SYS_TEMP)
            return
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        conn.message_finished()
        self._retrieved += 1
        self._octets += message.size

    async def _commit(self, event: ev.Commit) -> None:
        assert self._maildrop is not None
        deleted = [cast(MessageInfo, m) for m in event.deleted]
        try:
            await self._maildrop.delete(deleted)
        except StoreError as exc:
            self.log.error("deletion failed, nothing deleted: %s", exc)
            self._conn.commit_failed(Failure.SYS_TEMP)
            return
        self.log.info("deleted %d messages", len(deleted))
        self._conn.commit_succeeded()

    # ------------------------------------------------------------------ the end

    async def _finish(self, reason: str) -> None:
        if self._slot is not None:
            self._context.deadlines.discard(self, self._slot)
            self._slot = None
        if self._maildrop is not None:
            try:
                await self._maildrop.close()
            finally:
                self._maildrop = None
                if self._user is not None:
                    self._context.limits.release_user(self._user.name)
        writer = self._writer
        try:
            data = self._conn.data_to_send()
            if data and not writer.is_closing():
                writer.write(data)
            # close() flushes, then ends TLS with close_notify before the TCP FIN.  Waiting
            # for the peer's close_notify is a courtesy: a client that just drops the socket
            # must not hold a connection slot for long.
            writer.close()
            async with asyncio.timeout(_CLOSE_WAIT):
                await writer.wait_closed()
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
            writer.transport.abort()
        user = escape(self._user.name) if self._user else "-"
        self.log.info(
            "disconnect: reason=%s user=%s retrieved=%d octets=%d",
            escape(reason),
            user,
            self._retrieved,
            self._octets,
        )


def tls_description(writer: asyncio.StreamWriter) -> str:
    """``TLSv1.3 TLS_AES_256_GCM_SHA384`` for the log."""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return "none"
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0] if cipher else '?'}"
