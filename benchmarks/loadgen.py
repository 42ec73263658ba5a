"""Client worker processes: each runs its share of the connections on its own uvloop loop.

One Python process saturates a core long before a server does, so the load is spread over
several forked processes that start together (``Job.start_at``) and report their own CPU time.
The pipes carry a job in and a :class:`Result` out; ``idle`` also reports "held" midway and
waits for "release", so the runner can measure the server while the connections stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from benchmarks.scenarios import Job, Result, run_job

_loop_factory: Callable[[], asyncio.AbstractEventLoop]
try:
    import uvloop

    _loop_factory = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
    _loop_factory = asyncio.new_event_loop


def raise_nofile() -> int:
    """Raise the soft fd limit to the hard one; returns it (10,000 idle sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run_coroutine_job(job: Job, conn: Connection | None) -> Result:
    async def wait_release(held: int) -> None:
        if conn is None:
            return
        conn.send(("held", held))
        loop = asyncio.get_running_loop()
        # Bounded: a runner that died must not leave sockets open forever.
        await loop.run_in_executor(None, conn.poll, 900.0)
        if conn.poll():
            conn.recv()

    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(run_job(job, wait_release))


def _serve(conn: Connection) -> None:
    raise_nofile()
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            result = run_coroutine_job(job, conn)
        except Exception as exc:  # report, never hang the runner
            result = Result()
            result.error(exc)
            result.error_samples.append(traceback.format_exc(limit=-3))
        conn.send(("done", result))


class ClientPool:
    """``size`` forked client processes, reused for every job of a run."""

    def __init__(self, size: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        for _ in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child,), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    @property
    def size(self) -> int:
        return len(self._conns)

    def _dispatch(self, job: Job) -> list[Connection]:
        """Deal ``job.users`` round-robin over the workers; all start 0.3 s from now."""
        start_at = time.time() + 0.3
        used = []
        for i, conn in enumerate(self._conns):
            users = job.users[i :: self.size]
            if users:
                conn.send(replace(job, users=users, start_at=start_at))
                used.append(conn)
        return used

    @staticmethod
    def _collect(conns: list[Connection], timeout: float) -> Result:
        total = Result()
        for conn in conns:
            if not conn.poll(timeout):
                raise RuntimeError("client worker did not answer in time")
            tag, result = conn.recv()
            assert tag == "done", tag
            total.merge(result)
        return total

    def run(self, job: Job) -> Result:
        conns = self._dispatch(job)
        return self._collect(conns, job.duration + 120)

    def hold(self, job: Job) -> tuple[list[Connection], Result]:
        """Start an idle job; returns once every worker holds its connections.

        Returns the workers now holding, to be given to :meth:`release`, and the merged
        results of any worker that ended early (a failure: its errors say why).
        """
        conns = self._dispatch(job)
        holding: list[Connection] = []
        early = Result()
        for conn in conns:
            if not conn.poll(job.ramp_timeout + 120):
                raise RuntimeError("client worker did not finish ramping up")
            tag, payload = conn.recv()
            if tag == "held":
                holding.append(conn)
            else:
                early.merge(payload)
        return holding, early

    def release(self, conns: list[Connection], early: Result) -> Result:
        for conn in conns:
            conn.send("release")
        total = self._collect(conns, 180)
        total.merge(early)
        return total

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
