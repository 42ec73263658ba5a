"""The parent of pre-forked workers: it starts them, replaces them and stops them.

The parent binds every listening socket (POP3 and LMTP) and builds the TLS context once,
then forks ``server.workers`` workers that accept from those sockets and share that context.
It keeps the sockets, so that it can start workers again later:

- **SIGHUP**, or a change of the certificate or key files (looked at every ``[tls]
  reload_check_interval`` seconds, :mod:`mailslot.tls.watch`), loads them all again. On success
  the parent forks a new generation of workers with the new context and tells the old
  generation to retire (:data:`RETIRE`): an old worker stops accepting, serves its open
  sessions to their end and exits. A generation shares one context and so its session-ticket
  keys, and a TLS session resumes on whichever worker takes the next connection (RFC 8446
  section 2.2, RFC 5077). On failure the old certificate stays in use and nothing changes.
- **A worker that exits on its own** (a crash, an out-of-memory kill) is replaced by a new one
  with the same index, so the server keeps all its workers.  A worker that exits before it
  has started serving would only fail again: the server then stops, with its exit status.
- **A worker that exits** gives back the connection and session slots it still held in the
  node's shared counts (:mod:`mailslot.server.sharedcounts`), before any replacement starts.
- **SIGTERM / SIGINT** close the parent's sockets and reach every worker, retiring ones
  included; the parent returns the highest exit status once they have all exited.
- **The admin socket's** ``mailslot reload`` and ``stop`` arrive from a worker, which may not
  signal a root parent once it has dropped its privileges: it writes ``H`` or ``T`` to the
  control pipe and sends SIGCONT, which kill(2) allows between processes of one session.  The
  parent reads the pipe and acts as on SIGHUP or SIGTERM (:mod:`mailslot.admin.server`).

The parent runs no event loop: it waits for signals with ``sigtimedwait`` (SIGCHLD
included), so no signal is handled in the middle of a fork.

Started as root, the parent stays root: it reads no byte from a client and opens no Maildir,
and it needs root to read a root-only key on SIGHUP.  Each worker, the replacements and every
new generation included, drops to ``[server] user`` in its ``worker_main`` before it serves
(:mod:`mailslot.privileges`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import signal
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mailslot import systemd
from mailslot.config import Config, ListenerConfig
from mailslot.metrics import ParentMetrics
from mailslot.server import tls
from mailslot.tls.watch import FileWatch

logger = logging.getLogger("mailslot")

#: Sent by the parent to the workers of a generation that a new one replaces.
RETIRE = signal.SIGUSR2
#: What a worker handles itself; blocked from before the fork until its handlers are set.
WORKER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, RETIRE}
_PARENT_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGCONT}
_WAKE_EVERY = 1.0  # seconds; a lost SIGCHLD is noticed this late at worst

#: ``run_worker(config, index, sockets, contexts, started)`` in the child: the worker's exit
#: status.  It calls ``started()`` once it serves.
WorkerMain = Callable[
    [
        Config,
        int,
        Mapping[ListenerConfig, socket.socket],
        "tls.TlsContexts | None",
        Callable[[], None],
    ],
    int,
]


@dataclass
class _Worker:
    index: int
    pid: int
    started: int  # the read end of a pipe the worker writes one byte to once it serves
    retiring: bool = False
    serving: bool = False  # it said so (read by poll())

    def poll(self) -> bool:
        """Whether the worker said it serves yet; never waits."""
        if not self.serving and select.select([self.started], [], [], 0)[0]:
            with contextlib.suppress(OSError):
                self.serving = os.read(self.started, 1) == b"."
        return self.serving

    def has_started(self) -> bool:
        """Whether the worker said it serves (call once it has exited: a read never waits)."""
        try:
            return self.serving or os.read(self.started, 1) == b"."
        except OSError:
            return False
        finally:
            os.close(self.started)


class Supervisor:
    """Pre-forked workers over shared sockets; see the module docstring."""

    def __init__(
        self,
        config: Config,
        workers: int,
        contexts: tls.TlsContexts | None,
        sockets: Mapping[ListenerConfig, socket.socket],
        worker_main: WorkerMain,
        load_contexts: Callable[[], tls.TlsContexts | None],
        watch: FileWatch | None = None,
        metrics: ParentMetrics | None = None,
        *,
        control: int | None = None,
        on_stop: Callable[[], None] | None = None,
        on_exit: Callable[[int], int] | None = None,
    ) -> None:
        self.config = config
        self.control = control  # the read end of the admin control pipe (non-blocking)
        self._on_stop = on_stop  # closes the admin socket: a stopping server answers no more
        self.count = workers
        self.contexts = contexts
        self.sockets = dict(sockets)
        self._worker_main = worker_main
        self._load_contexts = load_contexts
        self.watch = watch
        self.metrics = metrics or ParentMetrics()
        # Called with each exited worker's pid before a replacement is forked: gives back
        # the connection slots it held (SharedCounts.reclaim); returns how many.
        self._on_exit = on_exit
        self.workers: dict[int, _Worker] = {}  # by pid
        self._stopping = False
        self._status = 0
        # Workers to hear from before systemd is told the server serves (again): the first
        # generation, then each new one of a reload.
        self._awaited: list[_Worker] = []

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        """Start the workers and supervise them until they have all exited."""
        # Signals stay pending, rather than killing a new worker by their default action,
        # until each process has installed its handlers; the parent takes them from
        # sigtimedwait.  SIGCHLD must be blocked to be queued: its default action discards it.
        signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS | _PARENT_SIGNALS)
        try:
            for index in range(self.count):
                self._awaited.append(self.workers[self.spawn(index)])
            while self.workers:
                wait = self._wake_every()
                if self.watch is not None:
                    wait = min(wait, max(0.01, self.watch.until_due()))
                info = signal.sigtimedwait(_PARENT_SIGNALS, wait)
                signum = info.si_signo if info is not None else signal.SIGCHLD
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self.stop(signum)
                elif signum == signal.SIGHUP:
                    self.reload()
                elif signum == signal.SIGCONT:
                    self._commands()
                self.reap()
                self._announce()
                if self.watch is not None and self.watch.due() and self.watch.poll():
                    self.reload(changed=True)
        finally:
            self._close_sockets()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS | _PARENT_SIGNALS)
        return self._status

    def _commands(self) -> None:
        """What workers wrote to the control pipe: ``H`` reload, ``T`` stop."""
        if self.control is None:
            return
        try:
            data = os.read(self.control, 64)
        except (BlockingIOError, OSError):
            return
        if b"T" in data:
            logger.info("stop asked on the admin socket")
            self.stop(signal.SIGTERM)
        elif b"H" in data:
            logger.info("reload asked on the admin socket")
            self.reload()

    def _wake_every(self) -> float:
        # Often while waiting for workers to serve, so systemd hears of it soon.
        return _WAKE_EVERY / 20 if self._awaited else _WAKE_EVERY

    def _announce(self) -> None:
        """Tell systemd the server serves once every awaited worker does (or is gone)."""
        if not self._awaited or self._stopping:
            return
        if all(w.pid not in self.workers or w.poll() for w in self._awaited):
            self._awaited.clear()
            systemd.ready()

    def spawn(self, index: int) -> int:
        """Fork worker ``index`` of the current generation; its pid."""
        readable, writable = os.pipe()
        # What the parent built (modules, the configuration, the TLS context) is shared with
        # the worker page by page until one writes to it.  The cyclic collector writes to
        # every object it tracks (its gc_refs), so the first full collection in a worker
        # would copy all of those pages; frozen, it never looks at them (the gc module's
        # documentation, gc.freeze()).  Measured: 10,000 idle sessions over 2 workers, 4.17
        # -> 3.33 KiB of PSS per session.
        gc.freeze()
        try:
            pid = os.fork()
        except OSError:
            os.close(readable)
            os.close(writable)
            raise
        if pid == 0:
            code = 1
            try:
                for fd in [readable, *(other.started for other in self.workers.values())]:
                    os.close(fd)
                if self.control is not None:
                    os.close(self.control)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD, signal.SIGCONT})
                # Only this parent speaks to systemd (NotifyAccess=main).
                os.environ.pop("NOTIFY_SOCKET", None)
                code = self._worker_main(
                    self.config,
                    index,
                    self.sockets,
                    self.contexts,
                    lambda: _say_started(writable),
                )
            finally:
                os._exit(code)
        os.close(writable)
        self.workers[pid] = _Worker(index, pid, readable)
        return pid

    def reload(self, changed: bool = False) -> None:
        """SIGHUP, or ``changed`` certificate files (:mod:`mailslot.tls.watch`): a new
        generation of workers with every certificate and key read again."""
        if self._stopping:
            return
        systemd.reloading()
        signature = self.watch.signature() if self.watch is not None else None
        try:
            contexts = self._load_contexts()
        except (OSError, ssl.SSLError) as exc:
            log_reload_failure(exc, changed)
            systemd.ready()
            return
        finally:
            if self.watch is not None and signature is not None:
                self.watch.loaded(signature)
        if contexts is None:
            logger.info("SIGHUP: no TLS certificate configured, nothing to reload")
            systemd.ready()
            return
        old = [worker for worker in self.workers.values() if not worker.retiring]
        previous, self.contexts = self.contexts, contexts
        new: list[int] = []
        try:
            for index in range(self.count):
                new.append(self.spawn(index))
        except OSError as exc:  # fork: EAGAIN, ENOMEM
            logger.error("TLS reload failed, keeping the old workers: cannot fork: %s", exc)
            self.contexts = previous
            for pid in new:
                self.workers[pid].retiring = True
                _signal(pid, RETIRE)
            systemd.ready()
            return
        self._awaited = [self.workers[pid] for pid in new]
        self.metrics.certificates(contexts.loaded)
        for worker in old:
            worker.retiring = True
        log_reloaded(
            contexts,
            self.config,
            changed,
            f": {self.count} new workers, the old ones retire once their sessions end",
        )
        for worker in old:
            _signal(worker.pid, RETIRE)

    def stop(self, signum: int) -> None:
        """SIGTERM / SIGINT: no more connections; every worker is told."""
        self._stopping = True
        systemd.stopping()
        self._close_sockets()  # the ports refuse connections as soon as the workers stop
        if self._on_stop is not None:
            self._on_stop()
        for pid in self.workers:
            _signal(pid, signum)

    def reap(self) -> None:
        """Collect the workers that exited; replace those that should still be serving."""
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self.metrics.worker_exited(pid)
            code = os.waitstatus_to_exitcode(status)
            if self._on_exit is not None:
                reclaimed = self._on_exit(pid)
                if reclaimed:
                    logger.warning(
                        "worker pid=%d held %d connection and session slots; given back",
                        pid,
                        reclaimed,
                    )
            started = worker.has_started()
            if self._stopping:
                self._status = max(self._status, code)
            elif worker.retiring:
                if code != 0:
                    logger.warning("retired worker pid=%d %s", pid, _exited(code))
            elif started:
                logger.error(
                    "worker %d pid=%d %s; starting another", worker.index, pid, _exited(code)
                )
                self.metrics.worker_restarted()
                try:
                    self.spawn(worker.index)
                except OSError as exc:
                    logger.error("cannot start worker %d: cannot fork: %s", worker.index, exc)
            else:
                # It never served: a new one would fail the same way.
                logger.error(
                    "worker %d pid=%d %s before serving; stopping", worker.index, pid, _exited(code)
                )
                self._status = max(self._status, code if code > 0 else 1)
                self.stop(signal.SIGTERM)

    def _close_sockets(self) -> None:
        for sock in self.sockets.values():
            sock.close()


def log_reloaded(contexts: tls.TlsContexts, config: Config, changed: bool, extra: str = "") -> None:
    """The reload's warnings (the checks of :mod:`mailslot.tls.certificates`), then one line."""
    for finding in contexts.warnings:
        logger.warning("%s: %s", finding.key, finding.message)
    more = len(config.tls.certificates)
    what = f"{config.tls.certificate}" + (f" and {more} more" if more else "")
    why = "the certificate files changed: " if changed else ""
    logger.info("%sTLS certificate reloaded from %s%s", why, what, extra)


def log_reload_failure(exc: BaseException, changed: bool) -> None:
    """One line per failed reload; after a change of the files the watch tries again only
    when they change again, so a half-written renewal is said once."""
    if changed:
        logger.error(
            "the certificate files changed, but TLS reload failed, keeping the old "
            "certificate: %s; trying again when they change",
            exc,
        )
    else:
        logger.error("TLS reload failed, keeping the old certificate: %s", exc)


def _say_started(writable: int) -> None:
    with contextlib.suppress(OSError):
        os.write(writable, b".")
    with contextlib.suppress(OSError):
        os.close(writable)


def _exited(code: int) -> str:
    """``exited with status 1`` / ``was killed by SIGKILL``, from an exit code as
    :func:`os.waitstatus_to_exitcode` gives it."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
