"""The one process that runs the ACME loop (:mod:`.service`) beside the server.

Forked by :func:`mailslot.server.runner.run` before the listening sockets are bound and the
workers are started, so it holds none of their sockets, and there is one loop per server
whatever ``[server] workers`` says.  It is a process of its own, not a task in a worker
(there may be several, and each is replaced at will) nor in the supervisor (which runs no event
loop and must never block on a CA): an order's HTTP requests and waits block nothing but it.
It keeps the privileges the server started with, because it binds the challenge ports (80, 443)
and writes the key where ``[tls] private_key`` points; it reads nothing but the CA's
validation requests on those ports.

It talks to the server only through the certificate files: it writes them atomically and the
server's file watch reloads them.  It ends on SIGTERM or SIGINT, or when its parent is gone;
:func:`stop` is called by the server on its way out.  A failed round never ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

from mailslot.config import Config

logger = logging.getLogger("mailslot.acme")

_PARENT_CHECK = 2.0  # seconds between looks at whether the server is still there
_STOP_GRACE = 5.0  # seconds the process has to end on SIGTERM


def start(config: Config) -> int | None:
    """Fork the ACME process if ``[acme] enabled``; its pid."""
    if not config.acme.enabled:
        return None
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _main(config)
        except BaseException:
            logger.exception("acme: the ACME process failed")
        finally:
            logging.shutdown()
            os._exit(code)
    logger.info("acme: renewal process started (pid %d)", pid)
    return pid


def stop(pid: int | None, grace: float = _STOP_GRACE) -> None:
    """End the ACME process and collect it: SIGTERM, then SIGKILL after ``grace`` seconds
    (an order in progress may wait on the CA for a minute and more; killing it loses nothing,
    as every file is replaced in one rename)."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                logger.warning("acme: the renewal process did not end; killing it")
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.05)  # polling the child's exit
    except (ChildProcessError, ProcessLookupError):
        pass  # collected already (a supervisor reaps every child it sees)


def _main(config: Config) -> int:
    # Sockets systemd passed to the server (socket activation) are the server's alone.
    if os.environ.get("LISTEN_PID") == str(os.getppid()):
        count = int(os.environ.get("LISTEN_FDS", "0") or 0)
        os.closerange(3, 3 + count)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the server's reload, not ours
    asyncio.run(_serve(config))
    return 0


async def _serve(config: Config) -> None:
    from mailslot.tls.acme.service import AcmeService

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    parent = os.getppid()

    async def watch_parent() -> None:
        while not stopping.is_set():
            if os.getppid() != parent:
                logger.warning("acme: the server is gone; the renewal process ends")
                stopping.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), _PARENT_CHECK)

    watcher = asyncio.create_task(watch_parent())
    try:
        await AcmeService(config).run(stopping)
    finally:
        stopping.set()
        await watcher
