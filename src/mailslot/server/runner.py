"""Build the server from a :class:`~mailslot.config.Config` and run it until told to stop.

Signals: SIGTERM/SIGINT stop (stop accepting, let sessions finish until
``server.shutdown_timeout``), SIGHUP reloads the TLS certificates and keys without dropping
sessions (``mailslot stop`` and ``reload`` on the admin socket do the same:
:mod:`mailslot.admin.server`); so does a change of those files (:mod:`mailslot.tls.watch`),
seen by the process that handles SIGHUP. With ``server.workers`` > 1 a parent binds the
listening sockets and forks that many workers that all accept from them: a worker busy with
other sessions leaves a new connection to an idle one. The parent
(:mod:`mailslot.server.supervisor`) replaces a worker that dies and, on SIGHUP, starts a new
generation of workers while the old one retires. The maildrop lock (flock) is shared by all of
them.

Started as root, the process binds every listening socket and loads the TLS certificate and
key first; each worker then becomes ``[server] user`` (:mod:`mailslot.privileges`) before it
serves a single connection.  With ``workers`` > 1 the parent keeps root, as the masters of
Dovecot and nginx do: it talks to no client, and a reload must read a key only root may read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from mailslot import log, metrics, privileges, systemd
from mailslot.admin import sockets as admin_sockets
from mailslot.admin.server import AdminServer
from mailslot.admin.sockets import AdminEndpoints
from mailslot.auth import backends as auth_backends
from mailslot.auth.base import Authenticator
from mailslot.auth.pool import VerifyPool
from mailslot.auth.sqlcheck import SqlDsnMissing
from mailslot.config import Config, ListenerConfig
from mailslot.delivery.transactions import Transactions
from mailslot.privileges import Identity, PrivilegeError
from mailslot.protocol.connection import CoreConfig
from mailslot.server import tls
from mailslot.server.gate import LoginGate, SeparateGate
from mailslot.server.listener import Pop3Listener, listening_socket
from mailslot.server.penalty import LocalPenaltyState, PenaltyPolicy, PenaltyState
from mailslot.server.session import Session, SessionContext, format_address
from mailslot.server.sharedcounts import SharedCounts
from mailslot.server.sharedlimits import SharedLimits, table_for
from mailslot.server.supervisor import (
    RETIRE,
    WORKER_SIGNALS,
    Supervisor,
    log_reload_failure,
    log_reloaded,
)
from mailslot.store import backends
from mailslot.store.base import Store
from mailslot.tls.acme import process as acme_process
from mailslot.tls.acme import service as acme_service
from mailslot.tls.certificates import CertificateError
from mailslot.tls.context import contexts_for, key_pairs
from mailslot.tls.watch import FileWatch

logger = logging.getLogger("mailslot")


class Application:
    """Everything one worker process serves.

    ``contexts`` is the TLS context to serve and ``sockets`` the POP3 listeners' sockets,
    when the parent made them before forking (see :func:`run`); without them, :meth:`start`
    builds the context from the configuration and binds the listeners itself.
    """

    def __init__(
        self,
        config: Config,
        *,
        worker: int = 0,
        sockets: Mapping[ListenerConfig, socket.socket] | None = None,
        contexts: tls.TlsContexts | None = None,
        watch: FileWatch | None = None,
        metrics_socket: socket.socket | None = None,
        penalty: PenaltyState | None = None,
        counts: SharedCounts | None = None,
        admin: AdminEndpoints | None = None,
    ) -> None:
        self.config = config
        self.admin = admin
        self.admin_server: AdminServer | None = None
        # Made by the parent before forking, so that all workers share them; a lone worker
        # (or a test) makes its own.
        self.penalty = penalty if penalty is not None else penalty_state(config)
        self.counts = counts if counts is not None else limits_table(config)
        self.limits: SharedLimits | None = None  # made by start()
        self.worker = worker
        self.metrics = metrics.for_worker(config.metrics)
        self.metrics_socket = metrics_socket
        self.exporter: asyncio.AbstractServer | None = None
        self.sockets = sockets or {}
        self.tls = contexts
        # A lone worker watches the certificate files itself (no parent does it for it).
        self.watch = watch
        self._watch_timer: asyncio.TimerHandle | None = None
        self.listeners: list[Pop3Listener] = []
        self.lmtp_servers: list[asyncio.AbstractServer] = []
        self.lmtp_transactions = Transactions()  # DATA commands in progress, all listeners
        self._hurry = asyncio.Event()  # set by a second stop signal
        self.store = backends.build(config)
        # With PostgreSQL, the penalty and the limits hold across nodes too.
        self.cluster: Any = None  # a ClusterCounts
        if config.store.backend == "postgresql":
            self.penalty, self.cluster = cluster_state(config, self.store, self.penalty)
        # At most one stat() of a passwd-file per second rather than one per login.
        self.users = auth_backends.build(
            config,
            self.store,
            recheck=1.0,
            pool=VerifyPool(verify_threads(config), config.auth.verify_per_client),
        )

    def login_gate(self, store: Store, users: Authenticator) -> LoginGate:
        """How sessions ask the penalty, ``users`` and ``store`` (the metrics' views of
        ``self.store`` and ``self.users``) at a login: with the PostgreSQL store, in two
        statements (:class:`mailslot.store.postgresql.gate.PostgresGate`)."""
        if self.cluster is None:
            return SeparateGate(self.penalty, users, store)
        from mailslot.auth.postgresql import PostgresAuthenticator
        from mailslot.auth.usernameformat import NormalisingAuthenticator
        from mailslot.store.postgresql.cluster import ClusterPenaltyState
        from mailslot.store.postgresql.gate import PostgresGate
        from mailslot.store.postgresql.store import PostgresStore

        assert isinstance(self.penalty, ClusterPenaltyState)
        assert isinstance(self.store, PostgresStore)
        # The users table, under [auth] username_format's normalising (auth.backends.build).
        normalise: Callable[[str], str] = str
        table: Any = self.users
        if isinstance(table, NormalisingAuthenticator):
            normalise, table = table.normalise, table.inner
        shared = isinstance(table, PostgresAuthenticator) and table.pool is self.penalty.pool
        return PostgresGate(
            self.penalty,
            users,
            self.store,
            table=table if shared else None,
            normalise=normalise,
            observe_store=self.metrics.observe_store,
            observe_users=self.metrics.observe_users,
        )

    async def start(self) -> None:
        config = self.config
        load = getattr(self.users, "load", None)  # a passwd-file, read at once to fail early
        if load is not None:
            load()
        if self.tls is None:
            self.tls = tls_for(config)
        if self.watch is not None and self.tls is not None:
            self._watch_timer = asyncio.get_running_loop().call_later(
                self.watch.interval, self._look_at_files
            )
        if self.metrics_socket is not None:
            self.exporter = await metrics.start_exporter(self.metrics_socket, self.metrics)
        self.metrics.start()
        limits = config.limits
        base = CoreConfig(
            allow_plaintext=config.auth.allow_plaintext_without_tls,
            line_length=limits.command_line_length,
            sasl_line_length=limits.sasl_line_length,
            max_bad_commands_before_login=limits.max_bad_commands_before_login,
            max_bad_commands=limits.max_bad_commands,
            outlook_no_nuls="outlook-no-nuls" in config.store.client_workarounds,
            oe_ns_eoh="oe-ns-eoh" in config.store.client_workarounds,
        )
        max_connections = limits.max_connections
        affordable = connections_within(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if affordable < max_connections:
            # Refusing a connection with -ERR [SYS/TEMP] beats failing a login with EMFILE.
            # Every worker has the same limit: the first says it for all.
            say = logger.warning if self.worker == 0 else logger.debug
            say(
                "max_connections %d needs more open files than this process may have; "
                "serving at most %d connections per worker",
                max_connections,
                affordable,
            )
            max_connections = affordable
        # One count per node, whichever worker takes a connection (server.sharedlimits).
        shared_limits = SharedLimits(
            self.counts,
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.max_sessions_per_user,
            ipv6_prefix=config.auth.ipv6_prefix,
            process_connections=max_connections,
        )
        if self.cluster is not None:
            shared_limits.elsewhere = self.cluster.elsewhere
            self.cluster.start(shared_limits)
        self.limits = shared_limits
        store = self.metrics.observe_store(self.store)
        users = self.metrics.observe_users(self.users)
        gate = self.login_gate(store, users)
        for listener in config.listeners:
            if listener.protocol == "lmtp":
                if self.worker == 0:
                    await self._start_lmtp(listener, self.sockets.get(listener))
                continue
            context = SessionContext(
                core=Pop3Listener.core_config(listener, base),
                store=store,
                users=users,
                penalty=self.penalty,
                limits=shared_limits,
                tls=self.tls,
                login_timeout=limits.login_timeout,
                idle_timeout=limits.idle_timeout,
                handshake_timeout=config.tls.handshake_timeout,
                ipv6_prefix=config.auth.ipv6_prefix,
                gate=gate,
                logout_format=config.log.logout_format,
                metrics=self.metrics.listener(format_address((listener.address, listener.port))),
            )
            pop3 = Pop3Listener(
                listener, context, sock=self.sockets.get(listener), announce=self.worker == 0
            )
            await pop3.start()
            self.listeners.append(pop3)
        if self.admin is not None:
            node = config.server.node_id or socket.gethostname()
            self.admin_server = AdminServer(self.admin, self, node)
            await self.admin_server.start()

    def sessions(self) -> Iterator[Session]:
        """Every open POP3 connection of this worker (for the admin socket)."""
        for listener in self.listeners:
            yield from listener.sessions

    async def _start_lmtp(self, listener: ListenerConfig, sock: socket.socket | None) -> None:
        from mailslot.delivery.lmtp import start_lmtp_server

        server = await start_lmtp_server(
            listener,
            self.config.delivery,
            self.store,
            self.users,
            self.config.server.hostname,
            sock=sock,
            transactions=self.lmtp_transactions,
            metrics=self.metrics,
        )
        self.lmtp_servers.append(server)
        where = listener.path or format_address((listener.address, listener.port))
        logger.info("listening: lmtp %s", where)

    def reload_tls(self, changed: bool = False) -> None:
        """SIGHUP, or ``changed`` files (:class:`FileWatch`): load every certificate again."""
        if self.tls is None:
            return
        # Said to systemd only by the main process (a lone worker); a supervisor's workers
        # have no NOTIFY_SOCKET (Supervisor).
        systemd.reloading()
        signature = self.watch.signature() if self.watch is not None else None
        try:
            self.tls.reload()
        except (OSError, ssl.SSLError) as exc:
            log_reload_failure(exc, changed)
            return
        finally:
            systemd.ready()
            if self.watch is not None and signature is not None:
                self.watch.loaded(signature)
        self.metrics.certificates(self.tls.loaded)
        log_reloaded(self.tls, self.config, changed)

    def _look_at_files(self) -> None:
        assert self.watch is not None
        if self.watch.poll() is not None:
            self.reload_tls(changed=True)
        self._watch_timer = asyncio.get_running_loop().call_later(
            self.watch.interval, self._look_at_files
        )

    async def retire(self) -> None:
        """Stop accepting and serve the open sessions to their end, however long they last
        (each is bounded by the login and idle timeouts)."""
        await self._close(None)

    async def stop(self) -> None:
        await self._close(self.config.server.shutdown_timeout)
        if self.cluster is not None:
            await self.cluster.stop()
        for owner in (self.store, self.users):  # database pools (a shared one closes once)
            close = getattr(owner, "aclose", None)
            if close is not None:
                await close()

    def hurry(self) -> None:
        """A second SIGTERM or SIGINT while stopping: end the open sessions now."""
        if not self._hurry.is_set():
            logger.info("second stop signal: ending the open sessions now")
            self._hurry.set()

    async def close_admin(self) -> None:
        """At exit: this worker's own admin socket goes (the other workers stop asking it)."""
        if self.admin_server is not None:
            await self.admin_server.close()

    async def _close(self, deadline: float | None) -> None:
        if self._watch_timer is not None:
            self._watch_timer.cancel()
        if self.admin_server is not None:
            self.admin_server.stop_accepting()
        if self.exporter is not None:
            self.exporter.close()  # the other workers go on serving /metrics
        await asyncio.gather(
            self._close_lmtp(deadline),
            *(listener.close(deadline, self._hurry) for listener in self.listeners),
        )
        self.metrics.stop()

    async def _close_lmtp(self, deadline: float | None) -> None:
        """Stop accepting LMTP connections; let the DATA commands in progress end, up to
        ``deadline`` seconds: a worker that exited between a delivery and its reply would
        have the MTA send that message again."""
        for server in self.lmtp_servers:
            server.close()
        if not self.lmtp_transactions.count:
            return
        try:
            async with asyncio.timeout(deadline):
                await self.lmtp_transactions.finished()
        except TimeoutError:
            logger.warning(
                "stopping with %d LMTP deliveries in progress; the MTA will send them again",
                self.lmtp_transactions.count,
            )


async def serve(
    config: Config,
    *,
    worker: int = 0,
    sockets: Mapping[ListenerConfig, socket.socket] | None = None,
    ready: Callable[[Application], None] | None = None,
    contexts: tls.TlsContexts | None = None,
    watch: FileWatch | None = None,
    metrics_socket: socket.socket | None = None,
    penalty: PenaltyState | None = None,
    counts: SharedCounts | None = None,
    admin: AdminEndpoints | None = None,
) -> int:
    """Run one worker until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    log.set_worker(worker)
    log.attach_loop(loop)
    try:
        app = Application(
            config,
            worker=worker,
            sockets=sockets,
            contexts=contexts,
            watch=watch,
            metrics_socket=metrics_socket,
            penalty=penalty,
            counts=counts,
            admin=admin,
        )
        try:
            return await _serve(loop, app, ready)
        finally:
            await app.close_admin()
    finally:
        log.detach_loop()


async def _serve(
    loop: asyncio.AbstractEventLoop, app: Application, ready: Callable[[Application], None] | None
) -> int:
    try:
        await app.start()
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        await app.stop()
        return 75  # EX_TEMPFAIL: e.g. the port is taken
    stop = asyncio.Event()
    retire = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload_tls)
    loop.add_signal_handler(RETIRE, retire.set)
    # A pre-forked worker starts with these blocked (see the supervisor); now they have
    # handlers.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
    loop.set_exception_handler(_exception_handler)
    if ready is not None:
        ready(app)
    stopping = asyncio.ensure_future(stop.wait())
    retiring = asyncio.ensure_future(retire.wait())
    try:
        await asyncio.wait({stopping, retiring}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set() and await _retired(app, stopping):
            return 0
    finally:
        stopping.cancel()
        retiring.cancel()
    # The second signal's handler first: one that arrives just after the line below must not
    # meet the first signal's handler, which would take it for the first again.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, app.hurry)
    logger.info("shutting down")
    systemd.stopping()
    await app.stop()
    return 0


async def _retired(app: Application, stopping: asyncio.Future[Any]) -> bool:
    """The supervisor started new workers: take no new connections, end when the open
    sessions have; ``False`` if SIGTERM came first, to stop as usual."""
    logger.info(
        "worker %d retiring: no new connections, the open sessions are served to their end",
        app.worker,
    )
    drained = asyncio.ensure_future(app.retire())
    await asyncio.wait({drained, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not drained.done():
        drained.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drained
        return False
    drained.result()
    logger.info("worker %d retired", app.worker)
    return True


def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # Transport errors the loop reports outside any session (an SSL error while a closed
    # connection is torn down, say): one line each, not a traceback.  Failed handshakes are
    # logged by the listener and the session themselves.
    exception = context.get("exception")
    if isinstance(exception, (ssl.SSLError, ConnectionError, TimeoutError)):
        logger.info("connection error: %s", log.escape(exception))
        return
    loop.default_exception_handler(context)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run_worker(
    config: Config,
    worker: int,
    sockets: Mapping[ListenerConfig, socket.socket] | None = None,
    contexts: tls.TlsContexts | None = None,
    started: Callable[[], None] | None = None,
    identity: Identity | None = None,
    watch: FileWatch | None = None,
    metrics_socket: socket.socket | None = None,
    *,
    penalty: PenaltyState | None = None,
    counts: SharedCounts | None = None,
    admin: AdminEndpoints | None = None,
) -> int:
    # Before anything of the worker exists: no session, Maildir or passwd-file is ever
    # touched as root.
    try:
        privileges.drop(identity)
    except PrivilegeError as exc:
        logger.error("cannot start: %s: %s", exc.key, exc)
        return EX_OSERR
    ready = None if started is None else (lambda _app: started())
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(
            serve(
                config,
                worker=worker,
                sockets=sockets,
                contexts=contexts,
                ready=ready,
                watch=watch,
                metrics_socket=metrics_socket,
                penalty=penalty,
                counts=counts,
                admin=admin,
            )
        )


def file_watch(config: Config) -> FileWatch | None:
    """The watch on every certificate and key file, unless ``reload_check_interval`` is 0."""
    if config.tls.reload_check_interval <= 0 or config.tls.certificate is None:
        return None
    paths = [p for pair in key_pairs(config.tls) for p in (pair.certificate, pair.private_key)]
    return FileWatch(paths, config.tls.reload_check_interval)


def verify_threads(config: Config) -> int:
    """Threads for slow password checks per worker: ``[auth] verify_pool``, or the cores
    this process may run on shared among the workers (at least one each)."""
    if config.auth.verify_pool:
        return config.auth.verify_pool
    return max(1, len(os.sched_getaffinity(0)) // max(1, config.server.workers))


def cluster_state(config: Config, store: object, penalty: PenaltyState) -> tuple[PenaltyState, Any]:
    """The penalty and the counts of every node sharing ``store``'s database
    (:mod:`mailslot.store.postgresql.cluster`), over its pool; ``penalty`` is the node's own,
    which answers while the database does not."""
    from mailslot.store.postgresql.cluster import ClusterCounts, ClusterPenaltyState
    from mailslot.store.postgresql.store import PostgresStore

    assert isinstance(store, PostgresStore)
    local = penalty if isinstance(penalty, LocalPenaltyState) else penalty_state(config)
    counts = ClusterCounts(
        store.pool,
        backends.node_id(config),
        refresh=config.limits.cluster_refresh,
        forget_after=local.policy.forget_after,
    )
    return ClusterPenaltyState(store.pool, local.policy, local), counts


def limits_table(config: Config) -> SharedCounts:
    """The table of ``[limits]``'s counts, in memory the workers share."""
    return table_for(config.limits.max_connections, max(1, config.server.workers))


def penalty_state(config: Config) -> LocalPenaltyState:
    """The failure penalty of ``config``'s ``[auth]``, in memory its workers share."""
    auth = config.auth
    policy = PenaltyPolicy(
        base=auth.failure_delay, cap=auth.failure_delay_max, free=auth.failure_free_attempts
    )
    return LocalPenaltyState(policy, slots=auth.failure_addresses)


def listening_sockets(
    config: Config,
    owner: Identity | None = None,
    inherited: Iterable[socket.socket] = (),
) -> dict[ListenerConfig, socket.socket]:
    """A listening socket for every listener of ``config``, POP3 and LMTP; on an error (the
    port is taken, say) the ones already bound are closed again.  An LMTP Unix socket is
    ``owner``'s, so that the workers, once they are ``owner``, still own it.

    A POP3 listener whose address and port one of ``inherited`` (sockets systemd passed:
    :func:`mailslot.systemd.listen_fds`) is bound to takes that socket instead of binding.
    """
    spare = {_bound_to(sock): sock for sock in inherited}
    bound: dict[ListenerConfig, socket.socket] = {}
    try:
        for listener in config.listeners:
            if listener.protocol == "pop3":
                given = spare.pop((listener.address, listener.port), None)
                if given is not None:
                    logger.info(
                        "pop3 %s: socket passed by systemd",
                        format_address((listener.address, listener.port)),
                    )
                bound[listener] = given or listening_socket(listener)
            elif listener.protocol == "lmtp":
                from mailslot.delivery.lmtp import lmtp_socket

                bound[listener] = lmtp_socket(
                    listener, None if owner is None else (owner.uid, owner.gid)
                )
    except OSError:
        for sock in bound.values():
            sock.close()
        raise
    finally:
        for (address, port), sock in spare.items():
            logger.warning(
                "a socket passed by systemd (%s) matches no listener; closing it",
                format_address((address, port)),
            )
            sock.close()
    return bound


def _bound_to(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    if isinstance(name, tuple):
        return str(name[0]), int(name[1])
    return str(name), 0


def tls_for(config: Config) -> tls.TlsContexts | None:
    """The TLS contexts of ``config``'s certificates and keys, if it has them."""
    return contexts_for(config.tls)


def raise_file_limit() -> int:
    """Lift the soft limit on open files to the hard one; return the limit now in force.

    Each authenticated session holds two descriptors (its socket and its maildrop lock), so
    the common soft limit of 1024 would cap a server at a few hundred sessions.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


# Descriptors kept for everything that is not a session: listening sockets, the event loop,
# log files, the passwd-file and Maildir scans, worker threads.
_RESERVED_FILES = 64


def connections_within(file_limit: int) -> int:
    """How many sessions fit in ``file_limit`` descriptors: a socket, a lock file and the
    Maildir's directory (held so that no symlink is ever followed: store.confine) each."""
    return max(1, (file_limit - _RESERVED_FILES) // 3)


EX_OSERR = 71  # sysexits(3): a system call failed (here: dropping privileges)
EX_CONFIG = 78


def run(config: Config) -> int:
    """Serve ``config`` until SIGTERM/SIGINT; returns the exit code."""
    log.setup(config.log.level, config.log.format)
    # Our log format has no caller, process or thread fields; not collecting them saves a
    # stack walk and a getpid() per record (logging HOWTO, "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    try:
        identity = privileges.target(config.server)
    except PrivilegeError as exc:
        logger.error("cannot start: %s: %s", exc.key, exc)
        return EX_CONFIG
    if identity is None and os.geteuid() == 0:
        logger.warning("serving as root: [server] run_as_root = %r", config.server.run_as_root)
    try:
        config = auth_backends.with_dsn(backends.with_dsn(config))
    except (backends.DsnMissing, SqlDsnMissing) as exc:
        logger.error("cannot start: %s", exc)
        return EX_CONFIG
    status = backends.start(config)  # PostgreSQL: the schema, this node's old leases
    if status:
        return status
    limit = raise_file_limit()
    logger.info("open file limit: %d per worker process", limit)
    workers = max(1, config.server.workers)
    # One context for all workers, built before the fork: OpenSSL makes a context's session
    # ticket keys when it makes the context, so a ticket one worker issued resumes on any
    # other (RFC 8446 section 2.2, RFC 5077).  Made in each worker, a client's resumption
    # failed on every worker but the one that issued its ticket.  A reload builds a new
    # context in the parent and a new generation of workers to serve it, for the same reason.
    #
    # One listening socket per listener for all workers, bound before the fork: a new
    # connection waits in one queue and is taken by whichever worker is free first.  With a
    # socket per worker (SO_REUSEPORT), the kernel hashed each connection to a worker
    # whether or not it was busy, and the queue of the busier one set the tail latency:
    # p99 of plain logins on 2 cores 8.2-9.5 ms against 6.9-7.5 ms with one queue
    # (docs/benchmarks.md).
    #
    # With one worker too: the sockets and the key are got while the process may still be
    # root, and the worker drops before it serves (it then reloads the key on SIGHUP as
    # [server] user; docs/configuration.md).
    #
    # The watch looks at the files before they are read: a change while they are read is
    # then seen at its first look.  (`mailslot serve` has checked them and logged the warnings.)
    # ACME (docs/acme.md): a self-signed certificate until the CA's first one, and one process
    # for the renewal loop, forked before any socket is bound or worker started.
    if config.acme.enabled and acme_service.bootstrap(config):
        logger.info("acme: wrote a bootstrap certificate to %s", config.tls.certificate)
    acme = acme_process.start(config)
    try:
        return _run_serving(config, identity, workers)
    finally:
        acme_process.stop(acme)


def _run_serving(config: Config, identity: Identity | None, workers: int) -> int:
    """:func:`run` from the certificates on: the sockets, the workers, until they end."""
    watch = file_watch(config)
    try:
        contexts = tls_for(config)
    except CertificateError as exc:
        for finding in exc.findings:
            if finding.severity == "error":
                logger.error("cannot start: %s: %s", finding.key, finding.message)
        return EX_CONFIG
    except OSError as exc:  # ssl.SSLError included
        logger.error("cannot start: %s", exc)
        return 75  # EX_TEMPFAIL, as a worker that cannot start
    try:
        sockets = listening_sockets(config, identity, systemd.listen_fds())
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 75  # EX_TEMPFAIL, as a worker that cannot start
    if identity is not None:
        logger.info("serving as %s:%s", identity.user, identity.group)
    # The failure penalty's table, made before the first fork: every worker, those that
    # replace a dead one and each SIGHUP generation, maps the same shared memory, so a
    # client's failures count once per node whichever worker takes its connections.
    penalty = penalty_state(config)
    # So is the table of [limits]'s counts; the supervisor gives back a dead worker's slots.
    counts = limits_table(config)
    # Metrics: a directory every process writes its values into, and the exporter's socket
    # that every worker serves (mailslot.metrics); made before any worker exists.
    try:
        directory = metrics.prepare(config.metrics, identity)
        try:
            metrics_socket = metrics.metrics_socket(config.metrics)
        except OSError:
            metrics.remove(directory)
            raise
    except OSError as exc:
        for sock in sockets.values():
            sock.close()
        logger.error("cannot start: [metrics]: %s", exc)
        return 75
    parent = metrics.for_parent(config.metrics)
    if contexts is not None:
        parent.certificates(contexts.loaded)
    try:
        admin = admin_endpoints(config, identity, workers)
    except OSError as exc:
        for sock in sockets.values():
            sock.close()
        if metrics_socket is not None:
            metrics_socket.close()
        metrics.remove(directory)
        logger.error("cannot start: [admin] socket: %s", exc)
        return 75
    try:
        return _serve_workers(
            config,
            workers,
            contexts,
            sockets,
            identity,
            watch,
            metrics_socket,
            parent,
            penalty,
            counts,
            admin,
        )
    finally:
        if metrics_socket is not None:
            metrics_socket.close()
        metrics.remove(directory)
        if admin is not None:
            close_admin(admin)


def admin_endpoints(
    config: Config, identity: Identity | None, workers: int
) -> AdminEndpoints | None:
    """The admin socket (``[admin] socket``), bound before any worker exists and before the
    privileges are dropped; with several workers also their directory and the supervisor's
    control pipe (:mod:`mailslot.admin.server`).

    An unset ``socket`` that cannot be made (``/run`` not writable for a non-root user, another
    server on it) only costs the admin commands: a warning.  A configured one is required.
    """
    path = config.admin.socket or admin_sockets.DEFAULT_SOCKET
    group = None
    if config.admin.group is not None:
        import grp

        try:
            group = grp.getgrnam(config.admin.group).gr_gid
        except KeyError:
            raise OSError(f'no group "{config.admin.group}" ([admin] group)') from None
    try:
        listening = admin_sockets.bind_admin_socket(path, group)
    except OSError as exc:
        if config.admin.socket is not None:
            raise
        logger.warning("no admin socket (set [admin] socket): %s", exc)
        return None
    peers = control = None
    try:
        if workers > 1:
            uid, gid = os.geteuid(), os.getegid()
            if identity is not None:
                uid, gid = identity.uid, identity.gid
            peers = admin_sockets.peer_directory(path, uid, gid)
            control = os.pipe()
            os.set_blocking(control[0], False)
    except OSError:
        listening.close()
        admin_sockets.remove(path)
        raise
    logger.info("admin socket: %s", path)
    return AdminEndpoints(
        listening,
        path,
        os.geteuid(),
        peers,
        None if control is None else control[1],
        None if control is None else control[0],
        group,
    )


def close_admin(admin: AdminEndpoints) -> None:
    admin.listening.close()
    admin_sockets.remove(admin.path)
    if admin.peers is not None:
        admin_sockets.remove_peer_directory(admin.peers)
    for fd in (admin.control, admin.commands):
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _serve_workers(
    config: Config,
    workers: int,
    contexts: tls.TlsContexts | None,
    sockets: dict[ListenerConfig, socket.socket],
    identity: Identity | None,
    watch: FileWatch | None,
    metrics_socket: socket.socket | None,
    parent: metrics.ParentMetrics,
    penalty: PenaltyState,
    counts: SharedCounts,
    admin: AdminEndpoints | None = None,
) -> int:
    if workers == 1:

        def started() -> None:
            systemd.ready()

        try:
            return _run_worker(
                config,
                0,
                sockets,
                contexts,
                started,
                identity,
                watch,
                metrics_socket,
                penalty=penalty,
                counts=counts,
                admin=admin,
            )
        finally:
            for sock in sockets.values():
                sock.close()

    def worker_main(
        config: Config,
        index: int,
        sockets: Mapping[ListenerConfig, socket.socket],
        contexts: tls.TlsContexts | None,
        started: Callable[[], None],
    ) -> int:
        return _run_worker(
            config,
            index,
            sockets,
            contexts,
            started,
            identity,
            None,
            metrics_socket,
            penalty=penalty,
            counts=counts,
            admin=admin,
        )

    return Supervisor(
        config,
        workers,
        contexts,
        sockets,
        worker_main,
        lambda: tls_for(config),
        watch,
        parent,
        control=None if admin is None else admin.commands,
        on_stop=None if admin is None else admin.listening.close,
        on_exit=counts.reclaim,
    ).run()
