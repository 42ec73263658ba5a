"""Prometheus metrics behind narrow hooks with a no-op default (docs/metrics.md).

The server observes itself through :class:`Metrics` (one per worker) and the
:class:`ListenerMetrics` it hands each POP3 listener's :class:`SessionContext`.  The
defaults do nothing; a session calls the same hooks whether metrics are on or off, so a
metric is never the reason a session's code path branches.

Aggregation across pre-forked workers uses prometheus_client's multiprocess mode: every
process (the root parent included) writes its values into mmap files of its own in one
directory, made by :func:`prepare` before any worker exists and owned by ``[server] user``
so that workers still write there once they dropped privileges.  A scrape reads and sums all
files (``MultiProcessCollector``).  Counter files of dead workers stay, so that totals never
go backwards; the parent calls :meth:`ParentMetrics.worker_exited` (``mark_process_dead``)
for every worker it reaps, as prometheus_client's documentation asks.  The certificates'
expiry is not in those files: the process that loads them replaces a snapshot of them there
and a scrape reads it (:mod:`mailslot.certexpiry` says why).

The exporter is no thread and no process of its own: the parent binds the metrics socket
before forking, like the POP3 sockets, and every worker serves ``GET /metrics`` from its
event loop (:func:`start_exporter`).  As each answer reads the shared directory, any worker
gives the same page; a worker that dies or retires leaves the others serving it, and the
parent, which forks, never runs a thread (forking a process with threads is unsafe).

Label values come from the configuration and the protocol (listener, TLS version, SASL
mechanism, RETR/TOP, a login's :data:`LoginResult`), never from a client's user name or
address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import ssl
import struct
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mailslot import certexpiry
from mailslot.auth.base import AuthenticationFailed, Authenticator, AuthError, User
from mailslot.config import MetricsConfig
from mailslot.protocol.state import KNOWN_VERBS
from mailslot.store.base import (
    Maildrop,
    MaildropLocked,
    MessageGone,
    MessageInfo,
    Owner,
    SeenFlags,
    Store,
    StoreError,
)

if TYPE_CHECKING:
    from mailslot.privileges import Identity
    from mailslot.tls.certificates import Loaded

logger = logging.getLogger("mailslot")

_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Penalty delays are 0 to a few seconds; QUIT's commit is milliseconds, an fsync-bound one
# on a slow disk a second or more.
_PENALTY_BUCKETS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_REQUEST_LIMIT = 8192  # octets of an HTTP request head
_REQUEST_TIMEOUT = 5.0


# A login attempt's outcome, the ``result`` label of mailslot_logins_total (docs/metrics.md).
# ``failed`` is every reply a wrong password would get, whatever the reason (an unknown user
# too, and an allow_nets refusal), so that the page, which has no authentication, tells no
# more about a password than the wire does; the others are what the reply already says:
# ``in-use`` ([IN-USE], RFC 2449 section 8.1.2), ``disabled`` (nologin's text), ``error``
# ([SYS/TEMP] or [SYS/PERM], RFC 3206 section 4), and ``throttled`` / ``aborted`` (no
# password check: the failure penalty refused the attempt, or the client left first).
LoginResult = Literal["ok", "failed", "throttled", "aborted", "in-use", "disabled", "error"]

# ----------------------------------------------------------------------------- the no-ops


class ListenerMetrics:
    """What the sessions of one listener report; this default reports nothing."""

    __slots__ = ()

    def connected(self) -> None:
        """A connection was accepted and its session begins."""

    def session_ended(self, transport: asyncio.BaseTransport) -> None:
        """A session ended; ``transport`` tells its TLS version, if any."""

    def login(self, mechanism: str, result: LoginResult) -> None:
        """A login attempt's outcome (``mechanism``: ``USER`` or the SASL mechanism)."""

    def penalty(self, delay: float) -> None:
        """A failed login was answered ``delay`` seconds late."""

    def command(self, verb: str) -> None:
        """A command line was read: ``verb`` is a known verb in upper case or ``unknown``
        (the core never passes the client's own string)."""

    def retrieved(self, top_lines: int | None, size: int) -> None:
        """RETR (``top_lines`` None) or TOP sent a message of ``size`` stored octets."""

    def deleted(self, count: int) -> None:
        """QUIT deleted ``count`` messages durably."""

    def commit(self, seconds: float) -> None:
        """QUIT's UPDATE state took ``seconds``, whatever its outcome."""


class Metrics:
    """A worker's metrics; this default reports nothing."""

    __slots__ = ()

    def listener(self, name: str) -> ListenerMetrics:
        return ListenerMetrics()

    def lmtp_reply(self, code: int) -> None:
        """An LMTP recipient's delivery was answered with ``code`` (250, 452, 550...)."""

    def certificates(self, loaded: Sequence[Loaded]) -> None:
        """The certificates ``loaded`` were loaded again and are served now (a reload)."""

    def store_error(self, operation: str) -> None:
        """The store failed to ``open`` a maildrop, ``read`` a message or ``delete``."""

    def auth_error(self) -> None:
        """The user database could not answer (not a wrong password)."""

    def observe_store(self, store: Store) -> Store:
        """``store``, or a view of it that reports its errors; the default reports none and
        adds no call."""
        return store

    def observe_users(self, users: Authenticator) -> Authenticator:
        """``users``, or a view of it that reports its errors (see :meth:`observe_store`)."""
        return users

    def start(self) -> None:
        """Begin writing the values out periodically (in the running loop)."""

    def stop(self) -> None:
        """Write out what is left; the worker stops."""

    def render(self) -> bytes:
        return b""


class ParentMetrics:
    """What the supervising parent reports; this default reports nothing."""

    __slots__ = ()

    def worker_restarted(self) -> None:
        """A worker that had served died and was replaced."""

    def worker_exited(self, pid: int) -> None:
        """Worker ``pid`` was reaped: its live gauges go."""

    def certificates(self, loaded: Sequence[Loaded]) -> None:
        """The certificates ``loaded`` were loaded (at start, or again) and are served now."""


# ----------------------------------------------------------------------------- Prometheus


def prepare(config: MetricsConfig, owner: Identity | None) -> Path | None:
    """Make the multiprocess directory before any worker exists; None when metrics are off.

    Called before prometheus_client is imported anywhere: it picks multiprocess mode from
    the environment when it is first imported.
    """
    if config.port is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix="mailslot-metrics-"))
    if owner is not None:
        os.chown(directory, owner.uid, owner.gid)
    os.environ[_ENV] = str(directory)
    return directory


def remove(directory: Path | None) -> None:
    """Remove the multiprocess directory at exit."""
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
        os.environ.pop(_ENV, None)


def metrics_socket(config: MetricsConfig) -> socket.socket | None:
    """The exporter's listening socket, bound before the fork (and before the drop, so a
    port below 1024 works too); None when metrics are off."""
    if config.port is None:
        return None
    family = socket.AF_INET6 if ":" in config.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.address, config.port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _client() -> Any:
    if _ENV not in os.environ:
        raise RuntimeError("metrics.prepare() must run before prometheus_client is used")
    import prometheus_client

    return prometheus_client


def _directory() -> Path:
    return Path(os.environ[_ENV])


class _CertificateCollector:
    """The certificates' expiry gauge for a scrape's registry (:mod:`mailslot.certexpiry`)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def describe(self) -> list[Any]:
        return []  # so that registering it reads nothing; collect() reads the snapshot

    def collect(self) -> list[Any]:
        gauge = certexpiry.family(self._directory)
        return [] if gauge is None else [gauge]


class _SizedFiles:
    """The multiprocess collector over the value files that have their header.

    prometheus_client creates a value file empty and sizes it a moment later; reading it in
    between raises ``struct.error``, and a worker killed in that moment leaves the empty
    file for good, so that every scrape would fail (prometheus/client_python#1199).  An
    empty file holds no value yet: it is left out.  A sized file is never shrunk again.
    """

    _HEADER = 8  # the used-bytes integer and its padding

    def __init__(self, collector: Any, directory: Path) -> None:
        self._merge = collector.merge
        self._directory = directory

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        files = []
        for path in self._directory.glob("*.db"):
            try:
                if path.stat().st_size >= self._HEADER:
                    files.append(str(path))
            except FileNotFoundError:  # a dead worker's gauge file, removed meanwhile
                continue
        return self._merge(files, accumulate=True)


class _Families:
    """The metric families; made once per process, after :func:`prepare`."""

    def __init__(self) -> None:
        pc = _client()
        # Registered nowhere: the values go to this process's files, read back by the
        # MultiProcessCollector of a scrape.  (The default registry would refuse a second
        # family of the same name, and a worker inherits the parent's.)
        self.connections = pc.Counter(
            "mailslot_connections_total", "POP3 connections accepted.", ["listener"], registry=None
        )
        self.sessions = pc.Counter(
            "mailslot_sessions_total",
            "POP3 sessions ended, by TLS version.",
            ["listener", "tls"],
            registry=None,
        )
        self.logins = pc.Counter(
            "mailslot_logins_total",
            "Login attempts by result (ok, failed, throttled, aborted, in-use, disabled, error)"
            " and mechanism.",
            ["listener", "result", "mechanism"],
            registry=None,
        )
        self.commands = pc.Counter(
            "mailslot_commands_total",
            "POP3 command lines read, by verb (any verb POP3 does not know as unknown).",
            ["listener", "command"],
            registry=None,
        )
        self.penalty = pc.Histogram(
            "mailslot_login_penalty_seconds",
            "Delay added to failed logins.",
            buckets=_PENALTY_BUCKETS,
            registry=None,
        )
        self.retrieved = pc.Counter(
            "mailslot_messages_retrieved_total",
            "Messages sent by RETR or TOP.",
            ["command"],
            registry=None,
        )
        self.retrieved_bytes = pc.Counter(
            "mailslot_retrieved_bytes_total",
            "Stored octets of messages sent by RETR.",
            registry=None,
        )
        self.deleted = pc.Counter(
            "mailslot_messages_deleted_total", "Messages deleted by QUIT (durably).", registry=None
        )
        self.commit = pc.Histogram(
            "mailslot_commit_duration_seconds",
            "Time QUIT's UPDATE state took to delete the marked messages.",
            buckets=_COMMIT_BUCKETS,
            registry=None,
        )
        self.lmtp = pc.Counter(
            "mailslot_lmtp_deliveries_total",
            "LMTP recipient replies by class.",
            ["class"],
            registry=None,
        )
        self.store_errors = pc.Counter(
            "mailslot_store_errors_total",
            "Store failures by operation (a maildrop in use or a vanished message is none).",
            ["operation"],
            registry=None,
        )
        self.auth_errors = pc.Counter(
            "mailslot_auth_errors_total",
            "Times the user database could not answer (wrong passwords are not counted).",
            registry=None,
        )


class _PrometheusListener(ListenerMetrics):
    """Counter increments are added up in ``pending`` (a dict shared by the worker's
    listeners, keyed by label child) and written to the mapped files by
    :meth:`PrometheusMetrics.flush`: an increment here is a dict update, not a lock, a
    ``getpid()`` and a write into the file.  Histograms (a failed login's penalty, a QUIT)
    are rarer and observed at once."""

    # Label children bound once: a hook costs a dict lookup or two, not a labels() call.
    __slots__ = (
        "_commands",
        "_commit",
        "_connections",
        "_deleted",
        "_families",
        "_logins",
        "_name",
        "_penalty",
        "_pending",
        "_retr",
        "_retr_bytes",
        "_sessions",
        "_top",
    )

    def __init__(self, families: _Families, name: str, pending: dict[Any, float]) -> None:
        self._families = families
        self._name = name
        self._pending = pending
        self._connections = families.connections.labels(name)
        self._sessions: dict[str, Any] = {}
        self._logins: dict[tuple[str, LoginResult], Any] = {}
        self._commands: dict[str, Any] = {}
        self._penalty = families.penalty
        self._retr = families.retrieved.labels("RETR")
        self._top = families.retrieved.labels("TOP")
        self._retr_bytes = families.retrieved_bytes
        self._deleted = families.deleted
        self._commit = families.commit

    def connected(self) -> None:
        pending = self._pending
        child = self._connections
        pending[child] = pending.get(child, 0) + 1

    def session_ended(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        version = "none"
        if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
            version = ssl_object.version() or "none"
        child = self._sessions.get(version)
        if child is None:
            child = self._sessions[version] = self._families.sessions.labels(self._name, version)
        pending = self._pending
        pending[child] = pending.get(child, 0) + 1

    def login(self, mechanism: str, result: LoginResult) -> None:
        key = (mechanism, result)
        child = self._logins.get(key)
        if child is None:
            child = self._logins[key] = self._families.logins.labels(self._name, result, mechanism)
        pending = self._pending
        pending[child] = pending.get(child, 0) + 1

    def penalty(self, delay: float) -> None:
        self._penalty.observe(delay)

    def command(self, verb: str) -> None:
        child = self._commands.get(verb)
        if child is None:
            if verb not in KNOWN_VERBS:
                verb = "unknown"  # whoever calls: a label value is never a client's string
            child = self._commands.get(verb)
            if child is None:
                child = self._commands[verb] = self._families.commands.labels(self._name, verb)
        pending = self._pending
        pending[child] = pending.get(child, 0) + 1

    def retrieved(self, top_lines: int | None, size: int) -> None:
        pending = self._pending
        if top_lines is None:
            pending[self._retr] = pending.get(self._retr, 0) + 1
            pending[self._retr_bytes] = pending.get(self._retr_bytes, 0) + size
        else:
            pending[self._top] = pending.get(self._top, 0) + 1

    def deleted(self, count: int) -> None:
        pending = self._pending
        pending[self._deleted] = pending.get(self._deleted, 0) + count

    def commit(self, seconds: float) -> None:
        self._commit.observe(seconds)


class PrometheusMetrics(Metrics):
    """A worker's metrics in the multiprocess directory :func:`prepare` made.

    Counters reach the files at :meth:`flush`: every ``FLUSH_EVERY`` seconds once
    :meth:`start` ran, before this worker answers a scrape, and when it stops.  A worker
    killed outright loses at most that much of its counts.
    """

    __slots__ = ("_families", "_lmtp", "_pending", "_timer")

    FLUSH_EVERY = 1.0  # seconds

    def __init__(self) -> None:
        self._families = _Families()
        self._lmtp: dict[str, Any] = {}
        self._pending: dict[Any, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def listener(self, name: str) -> ListenerMetrics:
        return _PrometheusListener(self._families, name, self._pending)

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.flush()
            self._timer = loop.call_later(self.FLUSH_EVERY, tick)

        self._timer = loop.call_later(self.FLUSH_EVERY, tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()

    def flush(self) -> None:
        pending = self._pending
        if pending:
            for child, amount in pending.items():
                child.inc(amount)
            pending.clear()

    def store_error(self, operation: str) -> None:
        self._families.store_errors.labels(operation).inc()

    def auth_error(self) -> None:
        self._families.auth_errors.inc()

    def observe_store(self, store: Store) -> Store:
        return ObservedStore(store, self)

    def observe_users(self, users: Authenticator) -> Authenticator:
        return ObservedAuthenticator(users, self)

    def lmtp_reply(self, code: int) -> None:
        kind = f"{code // 100}xx"
        child = self._lmtp.get(kind)
        if child is None:
            child = self._lmtp[kind] = self._families.lmtp.labels(kind)
        child.inc()

    def certificates(self, loaded: Sequence[Loaded]) -> None:
        certexpiry.write(_directory(), loaded)

    def render(self) -> bytes:
        """The exposition text of every process's values, summed."""
        self.flush()
        pc = _client()
        from prometheus_client import multiprocess

        registry = pc.CollectorRegistry()
        registry.register(_SizedFiles(multiprocess.MultiProcessCollector, _directory()))
        registry.register(_CertificateCollector(_directory()))
        text: bytes = pc.generate_latest(registry)
        return text


class PrometheusParentMetrics(ParentMetrics):
    """The supervising parent's metrics (root's files in the same directory).  With one
    worker and no parent, the process makes one of these too, for the certificates it loads
    before dropping privileges."""

    __slots__ = ("_restarts",)

    def __init__(self) -> None:
        pc = _client()
        # The family is unlabelled, so its file is made here, and made readable by the
        # workers that answer scrapes whatever root's umask (systemd's UMask=0077).
        umask = os.umask(0o022)
        try:
            self._restarts = pc.Counter(
                "mailslot_worker_restarts_total",
                "Workers that died and were replaced.",
                registry=None,
            )
        finally:
            os.umask(umask)

    def worker_restarted(self) -> None:
        self._restarts.inc()

    def certificates(self, loaded: Sequence[Loaded]) -> None:
        certexpiry.write(_directory(), loaded)

    def worker_exited(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# ----------------------------------------------------------------------------- observed backends


class ObservedStore:
    """A :class:`Store` that reports its failures to ``metrics`` and re-raises them.

    Made by :meth:`PrometheusMetrics.observe_store` only: with metrics off the session gets
    the store itself.  Errors a client causes or a session expects (``MaildropLocked``: the
    maildrop is in use; ``MessageGone``: deleted by another client) are not failures.
    """

    __slots__ = ("_metrics", "_store")

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    async def open(
        self, user: str, home: str | None = None, *, owner: Owner | None = None
    ) -> Maildrop:
        try:
            maildrop = await self._store.open(user, home, owner=owner)
        except MaildropLocked:
            raise
        except StoreError:
            self._metrics.store_error("open")
            raise
        return ObservedMaildrop(maildrop, self._metrics)

    async def deliver(
        self, user: str, data: bytes, home: str | None = None, *, owner: Owner | None = None
    ) -> str:
        try:
            return await self._store.deliver(user, data, home, owner=owner)
        except StoreError:
            self._metrics.store_error("deliver")
            raise


class ObservedMaildrop:
    """The :class:`Maildrop` of an :class:`ObservedStore`."""

    __slots__ = ("_maildrop", "_metrics")

    def __init__(self, maildrop: Maildrop, metrics: Metrics) -> None:
        self._maildrop = maildrop
        self._metrics = metrics

    @property
    def messages(self) -> Sequence[MessageInfo]:
        return self._maildrop.messages

    async def read(self, message: MessageInfo, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        chunks = self._maildrop.read(message, chunk_size)
        try:
            async for chunk in chunks:
                yield chunk
        except MessageGone:
            raise
        except StoreError:
            self._metrics.store_error("read")
            raise
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    async def delete(self, messages: Sequence[MessageInfo]) -> None:
        try:
            await self._maildrop.delete(messages)
        except StoreError:
            self._metrics.store_error("delete")
            raise

    async def close(self) -> None:
        await self._maildrop.close()

    # \Seen (store.base.SeenFlags) passes through to a maildrop that keeps it: without these
    # the session, seeing no SeenFlags here, flagged nothing while metrics were on.
    def retrieved(self, message: MessageInfo) -> None:
        if isinstance(self._maildrop, SeenFlags):
            self._maildrop.retrieved(message)

    def forget_retrieved(self) -> None:
        if isinstance(self._maildrop, SeenFlags):
            self._maildrop.forget_retrieved()


class ObservedAuthenticator:
    """An :class:`Authenticator` that reports the user database's failures to ``metrics``;
    a wrong password (``AuthenticationFailed``) is no failure of the database."""

    __slots__ = ("_metrics", "_users")

    def __init__(self, users: Authenticator, metrics: Metrics) -> None:
        self._users = users
        self._metrics = metrics

    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        try:
            return await self._users.authenticate(username, password, client=client)
        except AuthenticationFailed:
            raise
        except AuthError:
            self._metrics.auth_error()
            raise

    @property
    def uses_login_source(self) -> bool:
        return bool(getattr(self._users, "uses_login_source", False))

    async def lookup(self, username: str) -> User | None:
        try:
            return await self._users.lookup(username)
        except AuthError:
            self._metrics.auth_error()
            raise


def for_worker(config: MetricsConfig) -> Metrics:
    return Metrics() if config.port is None else PrometheusMetrics()


def for_parent(config: MetricsConfig) -> ParentMetrics:
    return ParentMetrics() if config.port is None else PrometheusParentMetrics()


# ----------------------------------------------------------------------------- the exporter


async def start_exporter(sock: socket.socket, metrics: Metrics) -> asyncio.AbstractServer:
    """Serve ``GET /metrics`` on ``sock`` from this worker's event loop (HTTP/1.0, one
    request per connection: what Prometheus' scraper needs, and nothing a client can hold)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].split()
            method = parts[0] if parts else b""
            if len(parts) >= 2 and method in (b"GET", b"HEAD") and parts[1] == b"/metrics":
                try:
                    body = metrics.render()
                except (OSError, RuntimeError, ValueError, struct.error) as exc:
                    # A value file this worker cannot read, or a damaged one (for which
                    # prometheus_client raises the other three).
                    logger.error("metrics: cannot read the values: %s", exc)
                    body, status, kind = b"cannot read the values\n", b"500 Error", b"text/plain"
                else:
                    status = b"200 OK"
                    kind = b"text/plain; version=0.0.4; charset=utf-8"
            else:
                body, status, kind = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % (status, kind, len(body))
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(answer, sock=sock, limit=_REQUEST_LIMIT)
