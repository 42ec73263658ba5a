"""What one client connection does in each benchmark, and the checks on every reply.

These coroutines run inside the load generator's worker processes (benchmarks.loadgen) and,
for the single-connection measurements (idle probe, bigbox), in the runner itself.
Every loop is bounded twice: by a deadline and by an operation count.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from benchmarks import proctree
from benchmarks.corpus import PASSWORD, Expected
from benchmarks.logins import LoginLoop
from benchmarks.pop3client import (
    Pop3Client,
    ReplyError,
    TlsMode,
    parse_listing,
    parse_stat,
)

Kind = Literal["login", "session", "retr", "idle"]
OP_TIMEOUT = 30.0  # a stuck server must not hang the run
MAX_ERRORS = 50  # after this many, a connection loop stops: the run is void anyway
MAX_ERROR_KINDS = 12


@dataclass
class Job:
    kind: Kind
    port: int
    tls: TlsMode
    ca_path: str
    users: list[str]
    expected: dict[int, Expected]
    duration: float = 5.0
    max_ops: int = 1_000_000
    start_at: float = 0.0  # time.time() at which every worker starts together
    pipeline: bool = True
    connect_concurrency: int = 64  # idle: simultaneous logins while ramping up
    ramp_timeout: float = 120.0  # idle: for all stages together
    stages: tuple[int, ...] = ()  # idle: hold after this many users (cumulative), then go on
    min_mem_available: int = 3 << 30  # idle: stop opening connections below this


@dataclass
class Result:
    ops: int = 0
    bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    greetings: list[float] = field(default_factory=list)
    errors: int = 0
    # Distinct errors and how often each happened: an exact account for the report, where
    # a few samples once hid that a run had two different failures.
    error_kinds: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # idle: connections the server did not take (capacity, not an error)
    held: int = 0
    ramp: float = 0.0  # idle: seconds until every connection was up (or given up)
    stop_reason: str = ""
    client_pss: int = 0  # idle: the client processes' own PSS (bytes), summed
    cpu: float = 0.0
    wall: float = 0.0

    def error(self, exc: BaseException, detail: str = "") -> None:
        self.errors += 1
        notes = " ".join(getattr(exc, "__notes__", ()))
        self._kind(detail or f"{type(exc).__name__}: {str(exc)[:160]} {notes}".rstrip(), 1)

    def _kind(self, key: str, count: int) -> None:
        # Bounded: a server failing in a new way per connection must not grow this forever.
        if key not in self.error_kinds and len(self.error_kinds) >= MAX_ERROR_KINDS:
            key = "(other errors)"
        self.error_kinds[key] = self.error_kinds.get(key, 0) + count

    def describe_errors(self) -> str:
        ordered = sorted(self.error_kinds.items(), key=lambda kv: -kv[1])
        return "; ".join(f"{n} x {key}" for key, n in ordered)

    def merge(self, other: Result) -> None:
        self.ops += other.ops
        self.bytes += other.bytes
        self.latencies += other.latencies
        self.greetings += other.greetings
        self.errors += other.errors
        for key, count in other.error_kinds.items():
            self._kind(key, count)
        self.refused += other.refused
        self.held += other.held
        self.client_pss += other.client_pss
        self.cpu += other.cpu
        self.wall = max(self.wall, other.wall)
        self.ramp = max(self.ramp, other.ramp)
        self.stop_reason = self.stop_reason or other.stop_reason


@functools.cache
def client_context(ca_path: str) -> ssl.SSLContext:
    """One context per process and CA, shared by all its connections (10,000 idle TLS ones).

    Loading the CA per connection would cost CPU and memory the server is not asked for;
    sessions are not resumed (no ``session=``), so every connection does a full handshake.
    """
    ctx = ssl.create_default_context(cafile=ca_path)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def check_message(wire: bytes, listed: int, expected: dict[int, Expected]) -> None:
    """A RETR body as sent must be the corpus template, dot-stuffed, byte for byte (CRC-32),
    and LIST's size must be the template's.

    The check runs on the stuffed bytes against the stuffed template rather than undoing
    the stuffing of every reply: that was a quarter of the load generator's CPU in the
    session benchmark.  A missing or extra stuffed dot changes the length or the CRC.
    """
    at = wire.find(b"X-Bench-Id: ", 0, 4096)
    if at < 0:
        raise ReplyError("RETR body has no X-Bench-Id header")
    ident = int(wire[at + 12 : wire.index(b"\r\n", at)])
    want = expected[ident]
    if listed != want.size:
        raise ReplyError(f"LIST said {listed} octets for message {ident}, not its {want.size}")
    if len(wire) != want.wire_size or zlib.crc32(wire) != want.wire_crc:
        raise ReplyError(
            f"RETR of message {ident} sent {len(wire)} octets, not the {want.wire_size}"
            " of the template dot-stuffed (or they differ from it)"
        )


async def open_login(job: Job, ctx: ssl.SSLContext, user: str) -> tuple[Pop3Client, float, float]:
    """Connect, (TLS), USER/PASS; returns client, greeting latency, login latency."""
    t0 = time.perf_counter()
    client, greeting = await Pop3Client.open(job.port, job.tls, ctx)
    try:
        await client.login(user, PASSWORD)
    except BaseException:
        client.abort()
        raise
    return client, greeting, time.perf_counter() - t0


async def scan(client: Pop3Client, pipeline: bool) -> tuple[int, list[int]]:
    """STAT, UIDL, LIST (pipelined when allowed), cross-checked; returns (count, sizes)."""
    if pipeline:
        client.send(b"STAT", b"UIDL", b"LIST")
    else:
        client.send(b"STAT")
    count, total = parse_stat(await client.read_status())
    if not pipeline:
        client.send(b"UIDL")
    uids = parse_listing(await client.read_multiline(), count)
    if len({uid for _, uid in uids}) != count:
        raise ReplyError("UIDL values are not unique")
    if not pipeline:
        client.send(b"LIST")
    sizes = [int(v) for _, v in parse_listing(await client.read_multiline(), count)]
    if sum(sizes) != total:
        raise ReplyError(f"LIST sizes sum to {sum(sizes)}, STAT said {total}")
    return count, sizes


def _login_load(job: Job, ctx: ssl.SSLContext, res: Result, end: float) -> None:
    """Logins on bare sockets (:mod:`benchmarks.logins`); blocks the caller until done.

    It runs the login load in a worker, where nothing else runs during a load job, and the
    idle probe in the runner.  The asyncio client took nearly as much CPU per login as the
    server it measured, on the same cores.
    """

    def done(greeting: float, latency: float) -> None:
        res.ops += 1
        res.latencies.append(latency)
        res.greetings.append(greeting)

    logins = LoginLoop(job.port, job.tls, ctx, OP_TIMEOUT, done, res.error)
    logins.run(job.users, end, job.max_ops, MAX_ERRORS)


async def _session_loop(job: Job, ctx: ssl.SSLContext, user: str, res: Result, end: float) -> None:
    while time.perf_counter() < end and res.ops < job.max_ops and res.errors < MAX_ERRORS:
        t0 = time.perf_counter()
        client: Pop3Client | None = None
        step = "STAT/UIDL/LIST"
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                client, _, _ = await open_login(job, ctx, user)
                count, sizes = await scan(client, job.pipeline)
                retrs = [b"RETR %d" % n for n in range(1, count + 1)]
                if job.pipeline:
                    client.send(*retrs)
                step = "RETR"
                for n, size in enumerate(sizes):
                    if not job.pipeline:
                        client.send(retrs[n])
                    check_message(await client.read_stuffed(size), size, job.expected)
                # QUIT only once every message is in: Dovecot's TLS proxy (its login process)
                # can drop the end of the pop3 process's output when that exits at a QUIT
                # pipelined behind the RETRs, and the run would not be a result.
                step = "QUIT"
                client.send(b"QUIT")
                await client.read_status()
                client.close()
        except Exception as exc:  # any failure voids the run; keep a sample
            if client is not None:
                exc.add_note(f"during {step}")
                client.abort()
            res.error(exc)
            continue
        res.ops += 1
        res.bytes += sum(sizes)
        res.latencies.append(time.perf_counter() - t0)


async def _retr_loop(job: Job, ctx: ssl.SSLContext, user: str, res: Result, end: float) -> None:
    client: Pop3Client | None = None
    try:
        async with asyncio.timeout(OP_TIMEOUT):
            client, _, _ = await open_login(job, ctx, user)
            count, sizes = await scan(client, job.pipeline)
        n = 0
        while time.perf_counter() < end and res.ops < job.max_ops:
            size = sizes[n % count]
            t0 = time.perf_counter()
            async with asyncio.timeout(OP_TIMEOUT):
                client.send(b"RETR %d" % (n % count + 1))
                check_message(await client.read_stuffed(size), size, job.expected)
            res.latencies.append(time.perf_counter() - t0)
            res.ops += 1
            res.bytes += size
            n += 1
        async with asyncio.timeout(OP_TIMEOUT):
            await client.quit()
    except Exception as exc:  # any failure voids the run; keep a sample
        res.error(exc)
        if client is not None:
            client.abort()


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


HoldCallback = Callable[[Result], Awaitable[bool]]


async def _idle(job: Job, ctx: ssl.SSLContext, res: Result, hold: HoldCallback) -> None:
    """Log the users in stage by stage, holding every connection; QUIT them all at the end.

    After each stage (``job.stages``: cumulative counts; default all users) ``hold`` reports
    the result so far and waits for the runner: True to go on to the next stage, False to end.
    One ramp thus serves every idle size, which halves the time the slowest peer needs.
    """
    held: list[Pop3Client] = []
    gate = asyncio.Semaphore(job.connect_concurrency)
    ramp_end = 0.0
    stop = False

    async def one(user: str) -> None:
        nonlocal stop
        async with gate:
            if stop or time.perf_counter() > ramp_end:
                res.refused += 1
                if not stop:
                    res.stop_reason = f"ramp-up budget of {job.ramp_timeout:g} s used up"
                return
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    client, greeting, latency = await open_login(job, ctx, user)
            except (ReplyError, ssl.SSLCertVerificationError) as exc:
                res.error(exc)
                return
            except (OSError, TimeoutError) as exc:
                # The server not taking more connections is its capacity, not a wrong reply.
                res.refused += 1
                res.stop_reason = res.stop_reason or f"{type(exc).__name__}: {exc}"
                return
            held.append(client)
            res.latencies.append(latency)
            res.greetings.append(greeting)
            if len(held) % 100 == 0 and _mem_available() < job.min_mem_available:
                stop = True
                res.stop_reason = "client stopped: MemAvailable below the safety floor"

    start = 0
    for upto in job.stages or (len(job.users),):
        t0 = time.perf_counter()
        # The ramp budget counts ramping only, not the runner's measurements in between.
        ramp_end = t0 + max(0.0, job.ramp_timeout - res.ramp)
        await asyncio.gather(*(one(u) for u in job.users[start:upto]))
        start = upto
        res.ramp += time.perf_counter() - t0
        res.held = res.ops = len(held)
        # Shown next to the server's: 10,000 TLS connections must not make the client the limit.
        res.client_pss = proctree.pss_bytes([os.getpid()])
        if not await hold(res):
            break
    gate = asyncio.Semaphore(job.connect_concurrency)

    async def bye(client: Pop3Client) -> None:
        async with gate:
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    await client.quit()
            except (OSError, ReplyError, TimeoutError) as exc:
                # Held for less than RFC 1939's 10-minute autologout: a drop is a failure.
                exc.add_note("during QUIT after idling")
                res.error(exc)
                client.abort()

    await asyncio.gather(*(bye(c) for c in held))


async def run_job(job: Job, hold: HoldCallback) -> Result:
    res = Result()
    ctx = client_context(job.ca_path)
    delay = job.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + job.duration
    if job.kind == "idle":
        await _idle(job, ctx, res, hold)
    elif job.kind == "login":
        _login_load(job, ctx, res, end)
    else:
        loop = {"session": _session_loop, "retr": _retr_loop}[job.kind]
        await asyncio.gather(*(loop(job, ctx, u, res, end) for u in job.users))
    res.wall = time.perf_counter() - t0
    res.cpu = time.process_time() - cpu0
    return res


def probe(job: Job, user: str, count: int, duration: float) -> Result:
    """Sequential fresh logins by one user: greeting and login latency while others idle."""
    res = Result()
    single = replace(job, users=[user], max_ops=count)
    _login_load(single, client_context(job.ca_path), res, time.perf_counter() + duration)
    return res


async def bigbox(job: Job, user: str, count: int, total: int) -> float:
    """Login + UIDL + LIST on a large maildrop; returns the seconds until LIST completed."""
    ctx = client_context(job.ca_path)
    t0 = time.perf_counter()
    async with asyncio.timeout(300):
        client, _, _ = await open_login(job, ctx, user)
        client.send(b"UIDL")
        uids = await client.read_multiline()
        client.send(b"LIST")
        sizes = await client.read_multiline()
        elapsed = time.perf_counter() - t0
        await client.quit()
    n_uids = len(parse_listing(uids, count))
    listed = parse_listing(sizes, count)
    if n_uids != count or sum(int(v) for _, v in listed) != total:
        raise ReplyError("bigbox listing does not match the maildrop")
    return elapsed
