"""One POP3 connection: bytes in -> core -> act -> bytes out, in the manner of hypercorn.

The driver is the connection's asyncio protocol: the transport's callbacks feed the sans-IO
core, and only work that does wait runs in a task.  It owns every timer (RFC 1939 section
3: the autologout timer of at least 10 minutes after login; before it, a deadline counted
from the accept that no amount of trickled bytes moves), performs
what the core asks (authentication, opening the maildrop, streaming message bytes with
back-pressure, the UPDATE commit, the STLS handshake) and maps backend errors to the core's
failure reasons.  A session that ends in any
way other than QUIT in TRANSACTION deletes nothing (RFC 1939 section 6).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import itertools
import logging
import math
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from mailslot.auth import policy
from mailslot.auth.base import (
    AuthenticationFailed,
    Authenticator,
    AuthError,
    LoginSource,
    Refused,
    User,
    login_source,
)
from mailslot.auth.restrictions import Refusal
from mailslot.log import LogContext, SessionLogger, escape, session_prefix
from mailslot.logout import (
    DEFAULT_FORMAT,
    LogoutCounts,
    end_kind,
    expand,
    uidl_change,
    wants_uidl_change,
)
from mailslot.metrics import ListenerMetrics
from mailslot.protocol import events as ev
from mailslot.protocol.connection import Connection, CoreConfig
from mailslot.protocol.responses import Code, Failure, err
from mailslot.protocol.state import State
from mailslot.server.gate import LoginGate, SeparateGate
from mailslot.server.limits import ConnectionLimits, RefusalLog
from mailslot.server.penalty import PenaltyState, address_key
from mailslot.server.proxy import ProxyHeader, ProxyParser, ProxyProtocolError
from mailslot.server.tls import TlsContexts
from mailslot.server.tlslayer import TlsTransport
from mailslot.store.base import (
    Maildrop,
    MaildropLocked,
    MessageGone,
    MessageInfo,
    PartialDeletion,
    PermanentFailure,
    ReadsAhead,
    SeenFlags,
    Store,
    StoreError,
)

logger = logging.getLogger("mailslot.session")

# Flush when this much is queued; drain() then applies the transport's back-pressure.
_FLUSH_AT = 256 * 1024
_CHUNK = 256 * 1024
_CLOSE_WAIT = 2.0
# Received bytes a session keeps while busy before it stops reading.
_READ_AHEAD = 64 * 1024
_TERMINATOR = b".\r\n"
_HANDED: Any = object()  # _Started: what the coroutine waits on went to the task


def session_ids() -> Iterator[str]:
    """Log ids for sessions: a random prefix per listener and worker, then a counter.

    Made once per listener, after any fork, so pre-forked workers do not share a prefix.  A
    counter costs no getrandom() per connection as a random id each would.
    """
    prefix = secrets.token_hex(3)
    return (f"{prefix}{n:x}" for n in itertools.count(1))


class ReadDeadlines:
    """The read deadlines of one listener's sessions, watched by one loop timer at a time.

    A loop timer per session costs ~580 bytes (the handle and libuv's timer), and idle
    sessions number in the tens of thousands.  Sessions wait here in buckets of
    ``resolution`` seconds; one timer fires for the earliest bucket and calls each session's
    ``_expire``.  A deadline is noticed up to one resolution late, never early.  A bucket is
    a dict, not a set: at 5,000 members a set takes 105 bytes each, a dict 30.
    """

    __slots__ = ("_armed", "_buckets", "_handle", "_loop", "_slots", "resolution")

    def __init__(self, resolution: float) -> None:
        self.resolution = resolution
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buckets: dict[int, dict[Session, None]] = {}
        self._slots: list[int] = []  # heap of the buckets' keys
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0

    def slot(self, deadline: float) -> int:
        return math.ceil(deadline / self.resolution)

    def add(self, session: Session, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            heapq.heappush(self._slots, slot)
            if self._handle is None or slot < self._armed:
                self._arm(slot)
        bucket[session] = None

    def discard(self, session: Session, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.pop(session, None)  # an empty bucket is dropped when it comes due

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = slot
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_at(slot * self.resolution, self._fire)

    def _fire(self) -> None:
        self._handle = None
        assert self._loop is not None
        now = self._loop.time()
        while self._slots and self._slots[0] * self.resolution <= now:
            for session in self._buckets.pop(heapq.heappop(self._slots), ()):
                session._expire()
        if self._slots:
            self._arm(self._slots[0])


def _deadlines_for(login_timeout: float, idle_timeout: float) -> ReadDeadlines:
    # A tenth of the shortest timeout, at most a second: a 60 s login timeout may end up to
    # a second late, a test's 0.3 s one 30 ms late.
    return ReadDeadlines(min(1.0, min(login_timeout, idle_timeout) / 10))


class SessionView(NamedTuple):
    """One logged-in session as ``mailslot who`` shows it (docs/cli.md)."""

    id: str
    user: str
    address: str  # the client's IP address
    client: str  # address:port
    listener: str  # the local address:port it came in on
    tls: str | None  # "TLSv1.3", or None without TLS
    since: float  # the login, seconds since the epoch
    retrieved: int  # RETR and TOP so far
    deleted: int  # messages marked with DELE, not yet removed


@dataclass(slots=True)
class SessionContext:
    """What every session of one listener shares."""

    core: CoreConfig
    store: Store
    users: Authenticator
    penalty: PenaltyState
    limits: ConnectionLimits
    tls: TlsContexts | None
    login_timeout: float
    idle_timeout: float
    handshake_timeout: float
    label: str = "plain"  # the listener's ``tls`` setting, for the log
    logout_format: str = DEFAULT_FORMAT  # [log] logout_format ("": no summary= field)
    proxy_protocol: bool = False
    ipv6_prefix: int = 64  # an IPv6 client's network, for the failure penalty
    # The penalty, users and store as a login asks them; None: SeparateGate over the three.
    gate: LoginGate | None = None
    ids: Iterator[str] = field(default_factory=session_ids)
    deadlines: ReadDeadlines = field(init=False)
    # Open connections; a dict, as ReadDeadlines' buckets are, for its size.
    sessions: dict[Session, None] = field(default_factory=dict)
    refusals: RefusalLog = field(default_factory=lambda: RefusalLog(logger))
    metrics: ListenerMetrics = field(default_factory=ListenerMetrics)
    # Set by the listener when it starts.  Kept rather than asked for: on Linux each
    # asyncio.get_running_loop() costs a getpid() system call.
    loop: asyncio.AbstractEventLoop = field(init=False)

    def __post_init__(self) -> None:
        self.deadlines = _deadlines_for(self.login_timeout, self.idle_timeout)
        if self.gate is None:
            self.gate = SeparateGate(self.penalty, self.users, self.store)


# Where a session is; the transport callbacks act on it.
_EARLY = 0  # not begun: STLS may have handed over bytes before connection_made
_PROXY = 1  # reading the PROXY header
_SERVING = 2
_STLS = 3  # STLS answered, the handshake not begun: any byte now is an injection
_INJECTED = 4  # ... and one came: the session ends without a handshake
_HANDSHAKE = 5  # STLS handshake running: bytes now came through TLS, kept for later
_ENDING = 6  # maildrop being released, the transport closed after it
_ENDED = 7


class Session(asyncio.Protocol):
    """Drives one :class:`Connection` from the transport's callbacks.

    No stream objects and no task while the client is quiet: an idle session is this object,
    its core and the transport.  Work that may wait (a password check, opening the maildrop,
    sending a message, the commit, releasing the maildrop) starts on the spot and gets a task
    of its own only if it does wait (a slow hash, a large maildrop, a message larger than
    the socket buffer); the STLS handshake always does.  The client's bytes received
    meanwhile wait in the core, and reading pauses when more than ``_READ_AHEAD`` of them
    wait.
    """

    __slots__ = (
        "_address",
        "_ahead",
        "_closer",
        "_conn",
        "_context",
        "_counted",
        "_counts",
        "_deadline",
        "_done",
        "_drain",
        "_early",
        "_logctx",
        "_lost",
        "_maildrop",
        "_phase",
        "_proxy",
        "_read_paused",
        "_real",
        "_since",
        "_slot",
        "_stop_reason",
        "_task",
        "_transport",
        "_username",
        "_write_paused",
        "header",
    )

    def __init__(
        self,
        context: SessionContext,
        header: ProxyHeader | None = None,
        *,
        address: str,
        deadline: float = 0.0,
    ) -> None:
        """``address``: what the listener counted the connection under when it accepted it;
        the session releases that count once it has begun.  ``deadline``: the end of the
        login phase (loop time), when the listener already started it (implicit TLS)."""
        self._context = context
        self._conn = Connection(context.core, context.metrics.command)
        self.header = header  # given by the listener when it read one before TLS
        self._phase = _EARLY
        self._transport: asyncio.Transport | None = None
        self._early: bytearray | None = None
        self._proxy: ProxyParser | None = None
        self._address = address
        self._real = address  # the connecting peer, a PROXY header's proxy
        self._counted = False
        self._maildrop: Maildrop | None = None
        self._ahead: ReadsAhead | None = None  # the maildrop, if it reads ahead
        self._username: str | None = None  # once logged in
        self._logctx: LogContext | None = None  # of the session's log lines, once begun
        self._counts: LogoutCounts | None = None  # once logged in
        self._since = 0.0  # wall-clock time of the login, for `mailslot who`
        self._stop_reason = "server shutdown"  # why shut_down() ended it
        # The read deadline, watched by the listener's ReadDeadlines (in bucket _slot, or
        # None) and moved forward lazily, rather than a timer per read.  Before login it is
        # the login deadline, fixed from the accept; after, the idle timeout's.
        self._slot: int | None = None
        self._deadline = deadline
        self._task: asyncio.Task[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._lost = False
        self._done: asyncio.Future[None] | None = None
        self._closer: asyncio.TimerHandle | None = None

    @property
    def log(self) -> logging.Logger | SessionLogger:
        """The session's logger: a line begins with its id and peer once it has begun, and
        carries its fields (listener, TLS, user...)."""
        logctx = self._logctx
        return logger if logctx is None else SessionLogger(logger, logctx)

    # ------------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        context = self._context
        context.sessions[self] = None
        self._counted = True  # the listener's count is the session's to release from now on
        context.metrics.connected()
        if not self._deadline:
            self._deadline = context.loop.time() + context.login_timeout
        if context.proxy_protocol and self.header is None:
            self._phase = _PROXY
            self._proxy = ProxyParser()
            self._wait_for_data()
        else:
            self._begin()

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _SERVING:
            self._conn.receive_data(data)
            if self._task is None:
                self._advance()
            elif self._conn.buffered > _READ_AHEAD and not self._read_paused:
                self._read_paused = True
                self._transport_or_fail().pause_reading()
        elif phase in (_EARLY, _HANDSHAKE):
            # TLS hands over what the client sent right after its Finished before the code
            # that started the handshake runs again; the core gets it once TLS is recorded.
            if self._early is None:
                self._early = bytearray()
            self._early += data
        elif phase == _PROXY:
            self._proxy_data(data)
        elif phase == _STLS:
            # RFC 2595 section 4 / CVE-2011-0411: bytes sent in the clear after STLS must
            # never be read as if they came through TLS.
            self.log.warning("data pipelined after STLS, closing")
            self._phase = _INJECTED  # the STLS task sees the change and gives up
            self._transport_or_fail().pause_reading()

    def eof_received(self) -> bool:
        if self._phase == _PROXY:
            self._proxy_refused(ProxyProtocolError("connection closed before a complete header"))
        elif self._phase == _SERVING:
            self._conn.receive_data(b"")
            if self._task is None:
                self._advance()
        # Over plain TCP, keep our half open for the replies to what came before the EOF;
        # TLS transports close on EOF whatever is returned.
        return not self._conn.tls_active

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._phase == _EARLY:
            return  # never begun (the TLS layer calls it only after connection_made)
        if self._phase == _PROXY:
            self._proxy_refused(exc or ConnectionResetError())
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("connection lost"))
        if self._task is None and self._phase < _ENDING:
            reason = f"connection lost: {type(exc).__name__}" if exc else "connection lost"
            self._end(reason)
        if self._phase == _ENDED:
            self._forget()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # ------------------------------------------------------------------ for the listener

    def closed(self) -> asyncio.Future[None]:
        """Done once the connection is closed."""
        if self._done is None:
            self._done = self._context.loop.create_future()
            if self._phase == _ENDED and self._lost:
                self._done.set_result(None)
        return self._done

    def shut_down(
        self,
        reason: str = "server shutdown",
        message: str = "Server shutting down, try again later.",
    ) -> None:
        """End now, at server shutdown: whatever was running is cancelled, nothing deleted.

        A client waiting for its next command is told why (RFC 3206 section 4: ``[SYS/TEMP]``,
        try again later); one in the middle of a reply is not, as a line there would corrupt it.
        """
        self._stop_reason = reason
        if self._task is not None:
            self._task.cancel()  # the task ends the session
        elif self._phase < _ENDING:
            if self._phase == _SERVING and self._transport is not None and not self._lost:
                self._send()
                self._transport.write(err(message, Code.SYS_TEMP))
            self._end(reason)

    # ------------------------------------------------------------------ for the admin socket

    def view(self) -> SessionView | None:
        """What ``mailslot who`` shows of a logged-in session; ``None`` before login or once
        it is ending."""
        if self._username is None or self._phase >= _ENDING or self._transport is None:
            return None
        transport = self._transport
        ssl_object = transport.get_extra_info("ssl_object")
        # The id is read back from the log context rather than kept: a slot per idle session.
        logctx = self._logctx
        return SessionView(
            id=logctx.session if logctx is not None else "",
            user=self._username,
            address=self._address,
            client=format_address(self._client_peer()),
            listener=format_address(transport.get_extra_info("sockname")),
            tls=ssl_object.version() if ssl_object is not None else None,
            since=self._since,
            retrieved=self._counts.retr_count if self._counts is not None else 0,
            deleted=self._conn.marked,
        )

    def kick(self) -> bool:
        """End the session for ``mailslot kick``: as at shutdown, its DELE marks are dropped
        (a session that ends without QUIT deletes nothing: RFC 1939 section 6).  ``False`` if
        it was ending already."""
        if self._phase >= _ENDING:
            return False
        self.shut_down("kicked by the administrator", "Disconnected by the administrator.")
        return True

    @property
    def user(self) -> str | None:
        """The logged-in user, else ``None``."""
        return self._username

    @property
    def address(self) -> str:
        """The client's address (the one a PROXY header gave, if any)."""
        return self._address

    def _client_peer(self) -> object:
        header = self.header
        if header is not None and header.source:
            return header.source
        return self._transport_or_fail().get_extra_info("peername")

    # ------------------------------------------------------------------ beginning

    def _begin(self) -> None:
        transport = self._transport_or_fail()
        peer = transport.get_extra_info("peername")
        self._real = str(peer[0]) if peer else self._address
        header = self.header
        if header is not None:
            peer = header.source or peer
        address = str(peer[0]) if peer else self._address
        context = self._context
        if address != self._address:
            # A PROXY header named the client: count it rather than the proxy from now on.
            refusal = context.limits.move_connection(self._address, address)
            if refusal is not None:
                context.refusals.refused(address, refusal)
                self._phase = _ENDED
                self._release_connection()
                transport.write(err(refusal.capitalize() + ".", Code.SYS_TEMP))
                transport.close()
                return
            self._address = address
        logctx = self._logctx = session_prefix(next(context.ids), format_address(peer))
        logctx.set("listener", context.label)
        if header is not None:
            logctx.set("proxy", format_address(transport.get_extra_info("peername")))
            logctx.set("header", f"v{header.version}/{header.command}")
        logctx.set("tls", tls_description(transport))
        self._phase = _SERVING
        early, self._early = self._early, None
        if early:
            self._conn.receive_data(bytes(early))
        self._advance()

    def _proxy_data(self, data: bytes) -> None:
        assert self._proxy is not None
        try:
            header = self._proxy.feed(data)
        except ProxyProtocolError as exc:
            self._proxy_refused(exc)
            return
        if header is None:
            self._wait_for_data()
            return
        rest = self._proxy.rest
        self._proxy = None
        self._stop_waiting()
        self.header = header
        if rest:
            self._early = bytearray(rest)
        self._begin()

    def _proxy_refused(self, exc: Exception) -> None:
        self._stop_waiting()
        transport = self._transport_or_fail()
        proxy_refused(transport.get_extra_info("peername"), exc)
        self._phase = _ENDED
        self._release_connection()
        transport.abort()

    def _release_connection(self) -> None:
        if self._counted:
            self._counted = False
            self._context.limits.release_connection(self._address)

    # ------------------------------------------------------------------ the core's events

    def _advance(self) -> None:
        """Run the core until it needs data or something from outside."""
        conn = self._conn
        while True:
            event = conn.next_event()
            if event is ev.NEED_DATA:
                if self._lost:
                    self._end("connection lost")
                    return
                if self._ahead is not None:
                    self._ahead.read_ahead(False)  # waiting for the client: keep nothing
                data = conn.data_to_send()
                if data:
                    self._transport_or_fail().write(data)
                if self._read_paused:
                    self._read_paused = False
                    self._transport_or_fail().resume_reading()
                self._wait_for_data()
                return
            if isinstance(event, ev.BadCommand):
                self.log.info("bad command: %s", escape(event.reason))
            elif isinstance(event, ev.Reset):
                if isinstance(self._maildrop, SeenFlags):
                    self._maildrop.forget_retrieved()  # as Dovecot's RSET
            elif isinstance(event, ev.Close):
                self._end(event.reason)
                return
            elif isinstance(event, ev.StartTls):
                self._phase = _STLS
                self._task = self._context.loop.create_task(self._perform_then_advance(event))
                return
            else:
                # Most such work does not wait at all ({PLAIN} passwords, a small maildrop
                # opened on the loop, a message in the page cache): it runs here, and a task
                # is made only for work that does wait.
                work = self._perform(event)
                try:
                    waiting = work.send(None)
                except StopIteration:
                    if self._phase >= _ENDING:
                        return
                    continue
                self._task = self._context.loop.create_task(
                    _Started(work, waiting, self._after_work)
                )
                return

    async def _perform_then_advance(self, event: ev.Event) -> None:
        await self._perform(event)
        self._after_work()

    def _after_work(self) -> None:
        """Back to the core after work in a task, unless the work ended the session."""
        if self._phase < _ENDING:
            self._task = None
            self._advance()

    async def _perform(self, event: ev.Event) -> None:
        """One event that may have to wait for something."""
        try:
            if isinstance(event, ev.Authenticate):
                await self._login(event)
            elif isinstance(event, ev.RetrieveMessage):
                await self._retrieve(event)
            elif isinstance(event, ev.Commit):
                started = self._context.loop.time()
                await self._commit(event)
                self._context.metrics.commit(self._context.loop.time() - started)
            else:
                assert isinstance(event, ev.StartTls)
                if not await self._start_tls():
                    self._task = None
                    self._end("TLS handshake failed", abort=True)
                    return
        except (ConnectionError, ssl.SSLError, TimeoutError) as exc:
            self._task = None
            self._end(f"connection lost: {type(exc).__name__}")
            return
        except asyncio.CancelledError:
            self._task = None
            self._end(self._stop_reason)
            raise
        except Exception:
            self.log.exception("internal error")
            self._task = None
            self._end("internal error")

    # ------------------------------------------------------------------ timers

    def _wait_for_data(self) -> None:
        """Start (or move) the read deadline of the current state.

        Before login the deadline stays where the accept put it: a client that trickles a
        byte now and then must not hold a connection (and a descriptor) for ever.  After
        login each read moves it, as RFC 1939 section 3's autologout timer.
        """
        context = self._context
        if self._conn.state == State.TRANSACTION:
            self._deadline = deadline = context.loop.time() + context.idle_timeout
        else:
            deadline = self._deadline
        deadlines = context.deadlines
        slot = deadlines.slot(deadline)
        if self._slot is None or slot < self._slot:
            if self._slot is not None:
                deadlines.discard(self, self._slot)
            deadlines.add(self, slot)
            self._slot = slot

    def _stop_waiting(self) -> None:
        if self._slot is not None:
            self._context.deadlines.discard(self, self._slot)
            self._slot = None

    def _expire(self) -> None:
        # A read started since this timer was set has moved the deadline: wait for that one.
        # While a task runs (a login, a RETR waiting on the client's window) no timer applies.
        self._slot = None
        if self._task is not None or (self._phase != _SERVING and self._phase != _PROXY):
            return
        if self._context.loop.time() < self._deadline:
            self._slot = self._context.deadlines.slot(self._deadline)
            self._context.deadlines.add(self, self._slot)
        elif self._phase == _PROXY:
            self._proxy_refused(TimeoutError())
        elif self._conn.state == State.TRANSACTION:
            self._transport_or_fail().write(err("Disconnected for inactivity."))
            self._end("idle timeout")
        else:
            self._transport_or_fail().write(err("Login timeout, disconnecting."))
            self._end("login timeout")

    # ------------------------------------------------------------------ writing

    def _send(self) -> None:
        data = self._conn.data_to_send()
        if data:
            self._transport_or_fail().write(data)

    async def _flush(self) -> None:
        """Send what the core queued; wait while the transport is over its high-water mark."""
        self._send()
        if self._lost:
            raise ConnectionResetError("connection lost")
        if self._write_paused:
            self._drain = self._context.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def _transport_or_fail(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    # ------------------------------------------------------------------ AUTHORIZATION

    async def _login(self, event: ev.Authenticate) -> None:
        conn = self._conn
        context = self._context
        name = escape(event.username, 64)
        # One penalty per client address (an IPv6 one per prefix), whichever worker and
        # connection the attempt comes on; see mailslot.server.penalty.
        client = address_key(self._address, context.ipv6_prefix)
        gate = context.gate
        assert gate is not None
        # The penalty's turn, and who checks the password (with PostgreSQL, one statement).
        admission, users = await gate.admit(client, event.username)
        # Each outcome is counted as soon as it is known, before any penalty's hold: a guesser
        # that closes without waiting for its -ERR is counted all the same.
        metrics = context.metrics
        if not admission.allowed:
            # Answered as a failure, and as late, so the client cannot tell it was not tried.
            metrics.login(event.mechanism, "throttled")
            self.log.info(
                "login refused, too many failures from %s: user=%s mechanism=%s",
                client,
                name,
                event.mechanism,
            )
            await self._hold(admission.wait)
            conn.login_failed(Failure.AUTH)
            return
        if admission.wait:
            try:
                await self._hold(admission.wait)
            except ConnectionError:
                metrics.login(event.mechanism, "aborted")
                await context.penalty.released(client)
                raise
            except BaseException:
                await context.penalty.released(client)
                raise
            if self._lost:
                metrics.login(event.mechanism, "aborted")
                await context.penalty.released(client)
                conn.login_failed(Failure.AUTH)  # nobody to tell: no password check either
                return
        try:
            if event.authzid is not None and event.authzid != event.username:
                # No proxy authorisation: acting as another user is refused like a bad password.
                raise AuthenticationFailed
            check = users.authenticate(event.username, event.password, client=client)
            if getattr(users, "uses_login_source", False):
                # In a task and context of its own, which carries where the login comes
                # from (auth.base.login_source); other backends need no task (~11 us).
                checking = contextvars.copy_context()
                checking.run(login_source.set, self._login_source())
                user = await asyncio.create_task(check, context=checking)
            else:
                user = await check
        except Refused as exc:  # a right password the backend refused, and logged why
            self.log.info("login failed: user=%s mechanism=%s", name, event.mechanism)
            await self._answer_refusal(exc.refusal, client, event.mechanism)
            return
        except AuthenticationFailed:
            metrics.login(event.mechanism, "failed")
            hold = await context.penalty.failed(client)
            metrics.penalty(hold)
            self.log.info("login failed: user=%s mechanism=%s", name, event.mechanism)
            await self._hold(hold)
            conn.login_failed(Failure.AUTH)
            return
        except AuthError:
            metrics.login(event.mechanism, "error")
            await context.penalty.released(client)
            self.log.warning("login failed, user database unavailable: user=%s", name)
            conn.login_failed(Failure.SYS_TEMP)
            return
        except BaseException:
            await context.penalty.released(client)  # stopped (shutdown) or a bug: no verdict
            raise
        if await self._refused(user, client, event.mechanism):
            return
        if user.legacy_scheme is not None:
            self.log.warning(
                "user=%s logged in with a %s password (a legacy scheme); have it rehashed:"
                " mailslot user passwd",
                escape(user.name),
                user.legacy_scheme,
            )
        # The password was right: whatever happens to the maildrop, the address is forgiven
        # (by gate.open, in the statement that opens the maildrop with PostgreSQL).
        if not context.limits.acquire_user(user.name):
            metrics.login(event.mechanism, "in-use")
            await context.penalty.succeeded(client)
            self.log.info("login refused, too many sessions: user=%s", escape(user.name))
            conn.login_failed(Failure.IN_USE)
            return
        try:
            maildrop = await gate.open(client, user)
        except MaildropLocked:
            context.limits.release_user(user.name)
            metrics.login(event.mechanism, "in-use")
            self.log.info("login refused, maildrop in use: user=%s", escape(user.name))
            conn.login_failed(Failure.IN_USE)
            return
        except StoreError as exc:
            context.limits.release_user(user.name)
            metrics.login(event.mechanism, "error")
            self.log.error("cannot open maildrop: user=%s error=%s", escape(user.name), exc)
            permanent = isinstance(exc, PermanentFailure)
            conn.login_failed(Failure.SYS_PERM if permanent else Failure.SYS_TEMP)
            return
        except BaseException:
            context.limits.release_user(user.name)
            raise
        self._username, self._maildrop = user.name, maildrop
        if isinstance(maildrop, ReadsAhead):
            self._ahead = maildrop
        self._since = time.time()
        messages = maildrop.messages
        self._counts = LogoutCounts(
            len(messages),
            0,  # their size: added up at the end, off the login's path (a large maildrop)
            conn.octets_in - conn.buffered,  # the login's line is Dovecot's last pre-login one
            conn.octets_out,  # and its +OK the first counted
        )
        self.log.info(
            "login: user=%s mechanism=%s messages=%d",
            escape(user.name),
            event.mechanism,
            len(messages),
        )
        if self._logctx is not None:
            self._logctx.set("user", escape(user.name))
        metrics.login(event.mechanism, "ok")
        conn.login_succeeded(messages)

    def _login_source(self) -> LoginSource:
        """Where this login comes from, for backends that pass it on (Dovecot's rip/lip)."""
        transport = self._transport_or_fail()
        remote = _endpoint(transport.get_extra_info("peername"))
        local = _endpoint(transport.get_extra_info("sockname"))
        if self.header is not None:
            if self.header.source is not None:
                remote = (self.header.source[0], self.header.source[1])
            if self.header.destination is not None:
                local = (self.header.destination[0], self.header.destination[1])
        return LoginSource(
            remote=remote, local=local, secured=self._conn.tls_active, real=self._real
        )

    async def _refused(self, user: User, client: str, mechanism: str) -> bool:
        """Dovecot's passdb restrictions after a right password (:mod:`mailslot.auth.policy`):
        answer and return True if ``user`` may not log in from here."""
        refusal = policy.check(user.extra, self._address, self._real)
        if refusal is None:
            return False
        self.log.info("login refused, %s: user=%s", refusal.log, escape(user.name))
        await self._answer_refusal(refusal, client, mechanism)
        return True

    async def _answer_refusal(self, refusal: Refusal, client: str, mechanism: str) -> None:
        """Answer a right password that Dovecot's passdb restrictions refuse
        (:mod:`mailslot.auth.restrictions`), with the failure penalty or forgiveness."""
        metrics = self._context.metrics
        if refusal.kind == "sys-perm":
            metrics.login(mechanism, "error")
        elif refusal.text is None and refusal.kind == "auth":
            # The reply of a wrong password (allow_nets, a field mailslot does not support):
            # counted as one, so the metrics page, which has no authentication, tells no
            # more than the wire about the password.  The log line says which.
            metrics.login(mechanism, "failed")
        else:
            metrics.login(mechanism, "disabled")  # nologin (or its referral): the reply says it
        if refusal.delay:
            hold = await self._context.penalty.failed(client)
            metrics.penalty(hold)
            await self._hold(hold)
        else:
            # Dovecot's nodelay after a right password: no wait, and the address is forgiven
            # as by a successful login (it knew a password).
            await self._context.penalty.succeeded(client)
        failure = {"sys-perm": Failure.SYS_PERM, "referral": Failure.REFERRAL}.get(
            refusal.kind, Failure.AUTH
        )
        self._conn.login_failed(failure, refusal.text)

    async def _hold(self, seconds: float) -> None:
        """Send what is queued, then wait ``seconds`` before the next reply."""
        if seconds > 0:
            await self._flush()
            await asyncio.sleep(seconds)

    async def _start_tls(self) -> bool:
        """RFC 2595 section 4: the handshake right after STLS's ``+OK``, on the same socket."""
        assert self._context.tls is not None
        await self._flush()
        if self._phase != _STLS:  # bytes came in the clear after STLS (see data_received)
            return False
        self._phase = _HANDSHAKE
        context = self._context
        assert context.tls is not None
        loop = context.loop
        ended: asyncio.Future[None] = loop.create_future()
        # The handshake is part of the login phase: it ends by the login deadline.
        transport = TlsTransport(
            loop,
            context.tls.current,
            functools.partial(_handshaken, ended),
            context.handshake_timeout,
            self._deadline,
            app=self,
        )
        transport.take_over(self._transport_or_fail())
        try:
            await ended
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = escape(exc) or type(exc).__name__
            if loop.time() >= self._deadline:
                reason = f"login timeout: {reason}"
            self.log.info("TLS handshake failed: %s", reason)
            return False
        self._transport = transport
        self._phase = _SERVING
        if self._logctx is not None:
            self._logctx.set("tls", tls_description(transport))
        self._conn.tls_started()
        early, self._early = self._early, None
        if early:
            self._conn.receive_data(bytes(early))
        return True

    # ------------------------------------------------------------------ TRANSACTION

    async def _retrieve(self, event: ev.RetrieveMessage) -> None:
        conn = self._conn
        assert self._maildrop is not None
        message = cast(MessageInfo, event.message)
        if self._ahead is not None:
            # More commands already in (pipelined): the next RETRs may ride on this read.
            self._ahead.read_ahead(conn.buffered > 0)
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
        before = conn.octets_out
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
        if event.top_lines is None and isinstance(self._maildrop, SeenFlags):
            self._maildrop.retrieved(message)  # RETR, not TOP: \Seen, as Dovecot sets it
        if self._counts is not None:
            # Dovecot counts from the +OK line up to the terminating ".\r\n", not it.
            sent = conn.octets_out - before - len(_TERMINATOR)
            self._counts.sent(event.top_lines is not None, sent, message.size)
        self._context.metrics.retrieved(event.top_lines, message.size)

    async def _commit(self, event: ev.Commit) -> None:
        assert self._maildrop is not None
        deleted = [cast(MessageInfo, m) for m in event.deleted]
        try:
            await self._maildrop.delete(deleted)
        except PartialDeletion as exc:
            rest = "will be deleted at next login" if exc.pending else "were not deleted"
            self.log.error(
                "deletion incomplete: %d of %d messages deleted, the rest %s: %s",
                exc.deleted,
                len(deleted),
                rest,
                exc,
            )
            self._conn.commit_failed(Failure.PARTIAL_DELETE)
            return
        except StoreError as exc:
            # Any other StoreError from delete() means none was deleted (store.base).
            self.log.error("deletion failed, nothing deleted: %s", exc)
            self._conn.commit_failed(Failure.SYS_TEMP)
            return
        self.log.info("deleted %d messages", len(deleted))
        if self._counts is not None:
            self._counts.deleted_count += len(deleted)
            self._counts.deleted_bytes += sum(m.size for m in deleted)
        self._context.metrics.deleted(len(deleted))
        self._conn.commit_succeeded()

    # ------------------------------------------------------------------ the end

    def _end(self, reason: str, *, abort: bool = False) -> None:
        """Release the maildrop, then send what is left and close.  Called once."""
        if self._phase >= _ENDING:
            return
        self._phase = _ENDING
        self._stop_waiting()
        maildrop, self._maildrop = self._maildrop, None
        self._ahead = None
        if maildrop is None:
            self._close(reason, abort)
            return
        # The lock goes before the last reply: a client that reconnects at once after QUIT's
        # +OK finds the maildrop free.  Releasing a Maildir's lock does not wait: no task.
        release = self._release(maildrop, reason, abort)
        try:
            waiting = release.send(None)
        except StopIteration:
            return
        self._task = self._context.loop.create_task(_Started(release, waiting))

    async def _release(self, maildrop: Maildrop, reason: str, abort: bool) -> None:
        try:
            await maildrop.close()
        finally:
            if self._username is not None:
                self._context.limits.release_user(self._username)
            self._task = None
            self._close(reason, abort)

    def _close(self, reason: str, abort: bool) -> None:
        transport = self._transport_or_fail()
        self._phase = _ENDED
        self._release_connection()
        data = self._conn.data_to_send()
        if self._lost:
            self._forget()  # else connection_lost() does, once the transport is closed
        elif abort:
            transport.abort()
        else:
            if data:
                transport.write(data)
            # close() flushes, then ends TLS with close_notify before the TCP FIN.  Waiting
            # for the peer's close_notify, or for a client that does not read, is a
            # courtesy: it must not hold a connection for long.
            transport.close()
            if self._conn.tls_active or transport.get_write_buffer_size():
                self._closer = self._context.loop.call_later(_CLOSE_WAIT, transport.abort)
        self._context.metrics.session_ended(transport)
        self._log_end(reason)

    def _log_end(self, reason: str) -> None:
        """The session's last line: how it ended and, once logged in, the logout summary."""
        counts = self._counts
        if counts is None:
            self.log.info(
                "disconnect: reason=%s user=- retrieved=0 octets=0 end=%s",
                escape(reason),
                end_kind(reason),
            )
            return
        conn = self._conn
        counts.ended(conn.octets_in - conn.buffered, conn.octets_out)
        counts.message_bytes = sum(m.size for m in conn.snapshot)
        template = self._context.logout_format
        if template and wants_uidl_change(template):
            counts.uidl_change = uidl_change(
                [m.uid for m in conn.snapshot],
                conn.uidl_listed,
                conn.delete_marks,
                conn.lowest_retrieved,
            )
        self.log.info(
            "disconnect: reason=%s user=%s retrieved=%d octets=%d end=%s"
            " retr=%d retr_octets=%d top=%d top_octets=%d deleted=%d deleted_octets=%d"
            " messages=%d size=%d bytes_in=%d bytes_out=%d summary=%s",
            escape(reason),
            escape(self._username),
            counts.retr_count + counts.top_count,
            counts.stored_octets,
            end_kind(reason),
            counts.retr_count,
            counts.retr_bytes,
            counts.top_count,
            counts.top_bytes,
            counts.deleted_count,
            counts.deleted_bytes,
            counts.message_count,
            counts.message_bytes,
            counts.input,
            counts.output,
            expand(template, counts) if template else "",
        )

    def _forget(self) -> None:
        self._context.sessions.pop(self, None)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)


class _Started(Coroutine[Any, Any, None]):
    """A coroutine started by hand and now waiting on ``waiting``, for a task to finish.

    The task's first step gets ``waiting`` (the future the coroutine waits on); from then on
    what the task sends and throws in (a future's result, a cancellation) goes on to the
    coroutine, as if the task had run it from the start.  A cancellation before the task's
    first step reaches the coroutine too, at the point where it waits, so its handlers run.
    ``then`` is called once the coroutine returns.
    """

    __slots__ = ("_coro", "_then", "_waiting")

    def __init__(
        self,
        coro: Coroutine[Any, Any, None],
        waiting: Any,
        then: Callable[[], None] | None = None,
    ) -> None:
        self._coro = coro
        self._waiting = waiting
        self._then = then

    def send(self, value: Any) -> Any:
        waiting = self._waiting
        if waiting is not _HANDED:
            self._waiting = _HANDED
            return waiting
        try:
            return self._coro.send(value)
        except StopIteration:
            self._finished()
            raise

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._waiting = _HANDED
        try:
            if val is None and tb is None:
                return self._coro.throw(typ)
            return self._coro.throw(typ, val, tb)  # pragma: no cover - the old signature
        except StopIteration:
            self._finished()
            raise

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, None]:
        value = self.send(None)
        while True:
            try:
                sent = yield value
            except BaseException as exc:
                try:
                    value = self.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = self.send(sent)
                except StopIteration:
                    return

    def _finished(self) -> None:
        if self._then is not None:
            self._then()


def _handshaken(ended: asyncio.Future[None], _: TlsTransport, error: BaseException | None) -> None:
    """An STLS handshake ended: wake the session's task."""
    if not ended.done():
        if error is None:
            ended.set_result(None)
        else:
            ended.set_exception(error)


def proxy_refused(peer: object, exc: Exception) -> None:
    """Log a connection closed for a missing or bad PROXY header."""
    if isinstance(exc, ProxyProtocolError):
        reason = escape(exc)
    elif isinstance(exc, TimeoutError):  # before OSError, of which it is a subclass
        reason = "no complete header in time"
    else:
        reason = f"connection lost: {type(exc).__name__}"
    logger.info("peer=%s PROXY header refused, closing: %s", format_address(peer), reason)


def _endpoint(address: object) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def format_address(address: object) -> str:
    """``1.2.3.4:995`` or ``[::1]:995``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def tls_description(transport: asyncio.BaseTransport) -> str:
    """``TLSv1.3/TLS_AES_256_GCM_SHA384`` for the log, or ``no``."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return "no"
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()}/{cipher[0] if cipher else '?'}"
