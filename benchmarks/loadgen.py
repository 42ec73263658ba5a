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
from dataclasses import dataclass, field, replace
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


# A worker holding idle connections waits this long for "release" before closing them by
# itself, so a runner that died does not leave sockets open forever.
RELEASE_TIMEOUT = 900.0
# A worker that still owes an answer gets this long to give it before it is replaced.
DRAIN_TIMEOUT = 5.0


def run_coroutine_job(job: Job, conn: Connection | None, seq: int = 0) -> Result:
    async def hold(snapshot: Result) -> bool:
        """Report an idle stage and wait for the runner's "next" (go on) or "release"."""
        if conn is None:
            return True
        conn.send(("held", seq, snapshot))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.poll, RELEASE_TIMEOUT)
        return conn.poll() and conn.recv() == "next"

    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(run_job(job, hold))


def _serve(conn: Connection) -> None:
    raise_nofile()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        if not isinstance(message, tuple):
            continue  # a "release" sent while this worker was busy with a non-idle job
        seq, job = message
        try:
            result = run_coroutine_job(job, conn, seq)
        except Exception as exc:  # report, never hang the runner
            result = Result()
            result.error(exc, "client worker failed: " + traceback.format_exc(limit=-3))
        conn.send(("done", seq, result))


@dataclass
class Worker:
    proc: BaseProcess
    conn: Connection
    owes: int = 0  # sequence number of the job it has not answered "done" to; 0: free


@dataclass
class IdleRun:
    """An idle job in progress: which workers still hold connections, and their latest word."""

    workers: list[Worker]
    stage_timeout: float
    holding: list[int] = field(default_factory=list)
    latest: dict[int, Result] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.holding = list(range(len(self.workers)))

    def snapshot(self) -> Result:
        """Every worker's latest result merged: the whole idle job as of the last stage."""
        total = Result()
        for result in self.latest.values():
            total.merge(result)
        return total


class ClientPool:
    """``size`` forked client processes, reused for every job of a run.

    Every job carries a sequence number that the worker echoes, and a worker still busy
    with an earlier job (a step that failed or timed out) is drained or replaced before it
    gets a new one: otherwise its late answer would be read as the next job's, and every
    step after one failure would fail too.
    """

    def __init__(self, size: int) -> None:
        self._ctx = multiprocessing.get_context("fork")
        self._seq = 0
        self._workers = [self._spawn() for _ in range(size)]

    def _spawn(self) -> Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child,), daemon=True)
        proc.start()
        child.close()
        return Worker(proc, parent)

    @property
    def size(self) -> int:
        return len(self._workers)

    def _ready(self, index: int) -> Worker:
        """The worker at ``index``, free: drained of an old job's answer, or a new process."""
        w = self._workers[index]
        if w.owes and w.proc.is_alive():
            with contextlib.suppress(RuntimeError):
                # An idle job still holding gets its release; then its "done" is awaited.
                with contextlib.suppress(OSError):
                    w.conn.send("release")
                self._receive(w, time.monotonic() + DRAIN_TIMEOUT, want="done")
        if w.owes or not w.proc.is_alive():
            w = self._replace(index)
        return w

    def _replace(self, index: int) -> Worker:
        w = self._workers[index]
        w.proc.terminate()
        w.proc.join(timeout=5)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(timeout=5)
        w.conn.close()
        w = self._workers[index] = self._spawn()
        return w

    def renew(self) -> None:
        """Replace every worker by a fresh process.

        A Python heap never shrinks, so a worker that held 10,000 TLS connections for one
        server would carry that memory into the next server's idle job: the client PSS an
        idle job reports is then its own.
        """
        for i in range(self.size):
            self._replace(i)

    def _dispatch(self, job: Job) -> list[Worker]:
        """Deal ``job.users`` round-robin over the workers; all start 0.3 s after dealing."""
        n = self.size
        chosen = [(i, job.users[i::n]) for i in range(n)]
        ready = [(i, self._ready(i), users) for i, users in chosen if users]
        start_at = time.time() + 0.3
        for i, w, users in ready:
            # This worker's share of each stage: its users among the first ``stage``.
            stages = tuple(len(range(i, stage, n)) for stage in job.stages)
            self._seq += 1
            w.conn.send((self._seq, replace(job, users=users, start_at=start_at, stages=stages)))
            w.owes = self._seq
        return [w for _, w, _ in ready]

    @staticmethod
    def _receive(w: Worker, deadline: float, want: str = "") -> tuple[str, Result | int]:
        """The next message for the job ``w`` owes (``want``: of that tag), by ``deadline``."""
        for _ in range(1000):  # stale messages are few; the bound only guards the loop
            left = deadline - time.monotonic()
            if left <= 0 or not w.conn.poll(left):
                break
            try:
                tag, seq, payload = w.conn.recv()
            except EOFError:
                raise RuntimeError("client worker exited") from None
            if seq != w.owes or (want and tag != want):
                continue
            if tag == "done":
                w.owes = 0
            return tag, payload
        raise RuntimeError("client worker did not answer in time")

    def _collect(self, workers: list[Worker], timeout: float) -> Result:
        deadline = time.monotonic() + timeout
        total = Result()
        for w in workers:
            _, result = self._receive(w, deadline, want="done")
            assert isinstance(result, Result)
            total.merge(result)
        return total

    def run(self, job: Job) -> Result:
        return self._collect(self._dispatch(job), job.duration + 120)

    def hold(self, job: Job) -> IdleRun:
        """Start an idle job; returns once every worker holds its first stage."""
        run = IdleRun(self._dispatch(job), job.ramp_timeout + 120)
        self._await_stage(run)
        return run

    def advance(self, run: IdleRun) -> None:
        """Let the holding workers ramp up their next stage; returns once they hold it."""
        for i in run.holding:
            run.workers[i].conn.send("next")
        self._await_stage(run)

    def _await_stage(self, run: IdleRun) -> None:
        deadline = time.monotonic() + run.stage_timeout
        try:
            for i in list(run.holding):
                tag, payload = self._receive(run.workers[i], deadline)
                assert isinstance(payload, Result)
                run.latest[i] = payload
                if tag == "done":  # ended early: a failure, its errors say why
                    run.holding.remove(i)
        except BaseException:
            self.release(run)
            raise

    def release(self, run: IdleRun) -> Result:
        """Let every holding worker QUIT its connections; returns the merged final results."""
        for i in run.holding:
            with contextlib.suppress(OSError):
                run.workers[i].conn.send("release")
        deadline = time.monotonic() + 180
        holding, run.holding = run.holding, []
        for i in holding:  # a worker that does not answer is drained or replaced by _ready
            _, result = self._receive(run.workers[i], deadline, want="done")
            assert isinstance(result, Result)
            run.latest[i] = result
        return run.snapshot()

    def close(self) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in self._workers:
            w.proc.join(timeout=10)
            if w.proc.is_alive():
                w.proc.terminate()
