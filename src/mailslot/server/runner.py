"""Build the server from a :class:`~mailslot.config.Config` and run it until told to stop.

Signals: SIGTERM/SIGINT stop (stop accepting, let sessions finish until
``server.shutdown_timeout``), SIGHUP reloads the TLS certificate and key without dropping
sessions.  With ``server.workers`` > 1 the process binds the POP3 listening sockets, then
forks that many workers that all accept from them: a worker busy with other sessions leaves a
new connection to an idle one.  The maildrop lock (flock) is shared by all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from mailslot import log
from mailslot.auth.passwdfile import PasswdFileAuthenticator
from mailslot.config import Config, ListenerConfig
from mailslot.protocol.connection import CoreConfig
from mailslot.server import tls
from mailslot.server.limits import Limits
from mailslot.server.listener import Pop3Listener, listening_socket
from mailslot.server.penalty import FailurePenalty
from mailslot.server.session import SessionContext, format_address
from mailslot.store.maildir import MaildirStore

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
    ) -> None:
        self.config = config
        self.worker = worker
        self.sockets = sockets or {}
        self.tls = contexts
        self.listeners: list[Pop3Listener] = []
        self.lmtp_servers: list[asyncio.AbstractServer] = []
        self.store = MaildirStore(
            config.store.maildir,
            hostname=config.server.hostname,
            snapshot_budget=config.store.snapshot_cache,
        )
        if config.auth.passwd_file is None:
            raise ValueError("[auth] passwd_file is required")
        # At most one stat() of the passwd-file per second rather than one per login.
        self.users = PasswdFileAuthenticator(config.auth.passwd_file, recheck=1.0)

    async def start(self) -> None:
        config = self.config
        self.users.load()
        if self.tls is None:
            self.tls = tls_for(config)
        limits = config.limits
        base = CoreConfig(
            allow_plaintext=config.auth.allow_plaintext_without_tls,
            line_length=limits.command_line_length,
            sasl_line_length=limits.sasl_line_length,
            max_bad_commands_before_login=limits.max_bad_commands_before_login,
            max_bad_commands=limits.max_bad_commands,
        )
        max_connections = limits.max_connections
        affordable = connections_within(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if affordable < max_connections:
            # Refusing a connection with -ERR [SYS/TEMP] beats failing a login with EMFILE.
            logger.warning(
                "max_connections %d needs more open files than this process may have; "
                "serving at most %d connections per worker",
                max_connections,
                affordable,
            )
            max_connections = affordable
        shared_limits = Limits(
            max_connections, limits.max_connections_per_ip, limits.max_sessions_per_user
        )
        penalty = FailurePenalty(config.auth.failure_delay, config.auth.failure_delay_max)
        for listener in config.listeners:
            if listener.protocol == "lmtp":
                if self.worker == 0:
                    await self._start_lmtp(listener)
                continue
            context = SessionContext(
                core=Pop3Listener.core_config(listener, base),
                store=self.store,
                users=self.users,
                penalty=penalty,
                limits=shared_limits,
                tls=self.tls,
                login_timeout=limits.login_timeout,
                idle_timeout=limits.idle_timeout,
                handshake_timeout=config.tls.handshake_timeout,
            )
            pop3 = Pop3Listener(listener, context, sock=self.sockets.get(listener))
            await pop3.start()
            self.listeners.append(pop3)

    async def _start_lmtp(self, listener: Any) -> None:
        from mailslot.delivery.lmtp import start_lmtp_server

        server = await start_lmtp_server(
            listener, self.config.delivery, self.store, self.users, self.config.server.hostname
        )
        self.lmtp_servers.append(server)
        where = listener.path or format_address((listener.address, listener.port))
        logger.info("listening: lmtp %s", where)

    def reload_tls(self) -> None:
        if self.tls is None:
            return
        try:
            self.tls.reload()
        except (OSError, ssl.SSLError) as exc:
            logger.error("TLS reload failed, keeping the old certificate: %s", exc)
            return
        logger.info("TLS certificate reloaded from %s", self.config.tls.certificate)

    async def stop(self) -> None:
        deadline = self.config.server.shutdown_timeout
        for server in self.lmtp_servers:
            server.close()
        await asyncio.gather(*(listener.close(deadline) for listener in self.listeners))


async def serve(
    config: Config,
    *,
    worker: int = 0,
    sockets: Mapping[ListenerConfig, socket.socket] | None = None,
    ready: Callable[[Application], None] | None = None,
    contexts: tls.TlsContexts | None = None,
) -> int:
    """Run one worker until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    log.attach_loop(loop)
    try:
        app = Application(config, worker=worker, sockets=sockets, contexts=contexts)
        return await _serve(loop, app, ready)
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
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload_tls)
    # A pre-forked worker starts with these blocked (see _prefork); now they have handlers.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    loop.set_exception_handler(_exception_handler)
    if ready is not None:
        ready(app)
    await stop.wait()
    logger.info("shutting down")
    await app.stop()
    return 0


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
) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(config, worker=worker, sockets=sockets, contexts=contexts))


def listening_sockets(config: Config) -> dict[ListenerConfig, socket.socket]:
    """A listening socket for every POP3 listener of ``config``; on an error (the port is
    taken, say) the ones already bound are closed again."""
    bound: dict[ListenerConfig, socket.socket] = {}
    try:
        for listener in config.listeners:
            if listener.protocol == "pop3":
                bound[listener] = listening_socket(listener)
    except OSError:
        for sock in bound.values():
            sock.close()
        raise
    return bound


def tls_for(config: Config) -> tls.TlsContexts | None:
    """The TLS context of ``config``'s certificate and key, if it has them."""
    if config.tls.certificate is None or config.tls.private_key is None:
        return None
    return tls.TlsContexts(config.tls.certificate, config.tls.private_key)


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
    """How many sessions fit in ``file_limit`` descriptors: a socket and a lock file each."""
    return max(1, (file_limit - _RESERVED_FILES) // 2)


def run(config: Config) -> int:
    """Serve ``config`` until SIGTERM/SIGINT; returns the exit code."""
    log.setup(config.log.level)
    # Our log format has no caller, process or thread fields; not collecting them saves a
    # stack walk and a getpid() per record (logging HOWTO, "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    limit = raise_file_limit()
    logger.info("open file limit: %d per worker process", limit)
    workers = max(1, config.server.workers)
    if workers == 1:
        return _run_worker(config, 0)
    # One context for all workers, built before the fork: OpenSSL makes a context's session
    # ticket keys when it makes the context, so a ticket one worker issued resumes on any
    # other (RFC 8446 section 2.2, RFC 5077).  Made in each worker, a client's resumption
    # failed on every worker but the one that issued its ticket.
    #
    # One listening socket per listener for all workers, bound before the fork: a new
    # connection waits in one queue and is taken by whichever worker is free first.  With a
    # socket per worker (SO_REUSEPORT), the kernel hashed each connection to a worker
    # whether or not it was busy, and the queue of the busier one set the tail latency:
    # p99 of plain logins on 2 cores 8.2-9.5 ms against 6.9-7.5 ms with one queue
    # (docs/benchmarks.md).
    try:
        contexts = tls_for(config)
        sockets = listening_sockets(config)
    except OSError as exc:  # ssl.SSLError included
        logger.error("cannot start: %s", exc)
        return 75  # EX_TEMPFAIL, as a worker that cannot start
    return _prefork(config, workers, contexts, sockets)


_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _prefork(
    config: Config,
    workers: int,
    contexts: tls.TlsContexts | None = None,
    sockets: Mapping[ListenerConfig, socket.socket] | None = None,
) -> int:
    # Signals stay pending, rather than killing a worker by their default action, until each
    # process has installed its handlers.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    # What the parent built (modules, the configuration) is shared with the workers page by
    # page until one writes to it.  The cyclic collector writes to every object it tracks
    # (its gc_refs), so the first full collection in a worker would copy all of those pages;
    # frozen, it never looks at them (the gc module's documentation, gc.freeze()).  Measured:
    # 10,000 idle sessions over 2 workers, 4.17 -> 3.33 KiB of PSS per session.
    gc.freeze()
    children: list[int] = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_worker(config, index, sockets, contexts)
            finally:
                os._exit(code)
        children.append(pid)
    # The workers hold the listening sockets now; were the parent to keep them open, the
    # ports would still take connections after every worker had stopped accepting.
    for sock in (sockets or {}).values():
        sock.close()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for signum in _SIGNALS:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    code = 0
    for child in children:
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        code = max(code, os.waitstatus_to_exitcode(status))
    return code
