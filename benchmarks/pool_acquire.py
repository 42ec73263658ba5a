"""``python -m benchmarks.pool_acquire``: what a statement of the PostgreSQL store costs the
server's CPU around the statement itself, and what a RETR's read costs both sides.

On a private cluster (:mod:`benchmarks.pgcluster`), in one process with uvloop as the server
runs, CPU time of this process per operation (``getrusage``; best of ``--reps`` runs):

- ``SELECT $1`` on a connection held throughout, through :class:`LazyPool`'s ``acquire``,
  and through asyncpg's own ``Pool.acquire(timeout=...)`` and release, as the store did before;
- one 44 KB message (the corpus's size) read by ``queries.READ_CHUNK`` (``substring`` of the
  EXTERNAL body) and by ``READ_WHOLE`` (the body as it is), with PostgreSQL's side as
  ``pg_stat_statements``' mean execution time and the postmaster tree's CPU per read.
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from benchmarks import pgcluster, proctree

Op = Callable[[], Awaitable[object]]

# The alternative to READ_CHUNK for a message that fits one chunk: the body as it is stored,
# no slice (measured the same: the store keeps READ_CHUNK).
READ_WHOLE = "SELECT body FROM mailslot_bodies WHERE account_id = $1 AND seq = $2"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(op: Op, count: int, reps: int, pg_pid: int) -> tuple[float, float]:
    """(this process's, PostgreSQL's) CPU µs per ``op``, of the rep this process spent least
    in."""
    for _ in range(count // 10):
        await op()
    best: tuple[float, float] | None = None
    for _ in range(reps):
        pg0 = proctree.cpu_seconds(proctree.tree(pg_pid))
        c0 = _cpu()
        for _ in range(count):
            await op()
        mine = (_cpu() - c0) / count * 1e6
        pg = (proctree.cpu_seconds(proctree.tree(pg_pid)) - pg0) / count * 1e6
        if best is None or mine < best[0]:
            best = (mine, pg)
    assert best is not None
    return best


async def _run(dsn: str, pg_pid: int, count: int, reps: int) -> None:
    from mailslot.store.postgresql import queries, schema
    from mailslot.store.postgresql.pool import LazyPool
    from mailslot.store.postgresql.store import DB_CHUNK, PostgresStore

    admin = await asyncpg.connect(dsn)
    try:
        await schema.upgrade(admin)
        await admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await admin.close()
    lazy = LazyPool(dsn, size=4)
    store = PostgresStore(lazy)
    body = b"Subject: read\r\n\r\n" + (b"x" * 78 + b"\r\n") * 560  # about 44 KB
    key = await store.deliver("reader", body)
    account, seq = (int(part) for part in key.split("/"))
    pool: Any = await lazy._get()
    held = await pool.acquire()

    async def on_held() -> object:
        return await held.fetchval("SELECT $1::integer", 1)

    async def through_lazy() -> object:
        async with lazy.acquire() as connection:
            return await connection.fetchval("SELECT $1::integer", 1)

    async def through_asyncpg() -> object:
        async with pool.acquire(timeout=5.0) as connection:
            return await connection.fetchval("SELECT $1::integer", 1)

    async def read_chunk() -> object:
        async with lazy.acquire() as connection:
            return await connection.fetchval(queries.READ_CHUNK, account, seq, 1, DB_CHUNK)

    async def read_whole() -> object:
        async with lazy.acquire() as connection:
            return await connection.fetchval(READ_WHOLE, account, seq)

    print(f"CPU per operation, µs (best of {reps} runs of {count}):")
    print(f"  {'operation':44} {'mailslot':>9} {'PostgreSQL':>11}")
    for name, op in (
        ("SELECT $1, connection held", on_held),
        ("SELECT $1, LazyPool.acquire", through_lazy),
        ("SELECT $1, asyncpg Pool.acquire(timeout)", through_asyncpg),
    ):
        mine, pg = await _measure(op, count, reps, pg_pid)
        print(f"  {name:44} {mine:9.1f} {pg:11.1f}")
    await pool.release(held)
    for name, op, query in (
        (f"read {len(body):,} octets, READ_CHUNK", read_chunk, "substring"),
        (f"read {len(body):,} octets, READ_WHOLE", read_whole, "SELECT body"),
    ):
        admin = await asyncpg.connect(dsn)
        await admin.execute("SELECT pg_stat_statements_reset()")
        mine, pg = await _measure(op, count, reps, pg_pid)
        mean = await admin.fetchval(
            "SELECT mean_exec_time FROM pg_stat_statements WHERE query LIKE $1",
            f"%{query}%mailslot_bodies%",
        )
        await admin.close()
        print(f"  {name:44} {mine:9.1f} {pg:11.1f}  (executor mean {mean * 1e3:.1f} µs)")
    await lazy.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pool_acquire")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    import uvloop

    with pgcluster.running() as cluster:
        uvloop.run(_run(cluster.dsn(), cluster.pid, args.count, args.reps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
