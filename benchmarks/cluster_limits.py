"""What counting connections and failed logins across nodes costs (docs/postgresql.md).

Compares, on one PostgreSQL (a private one from tests/support/postgres.py unless ``--dsn``):

- the node's shared-memory count per connection (SharedCounts.add, taken and given back);
- the alternative mailslot does not use: a database write per accept and per close (an
  upsert of a per-key counter, then its decrement), timed per connection;
- what mailslot does instead: one publishing round per worker every ``cluster_refresh``
  seconds (its counts out, every other node's in), timed for 10, 1,000 and 10,000 keys;
- the penalty's statements, one per login attempt (reserve, then failed or succeeded)::

    PYTHONPATH=src:. python -m benchmarks.cluster_limits --rounds 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg

from mailslot.server.penalty import LocalPenaltyState, PenaltyPolicy
from mailslot.server.sharedcounts import SharedCounts
from mailslot.store.postgresql import schema
from mailslot.store.postgresql.cluster import PUBLISH, ClusterPenaltyState
from mailslot.store.postgresql.pool import LazyPool

PER_CONNECTION_UP = """
INSERT INTO bench_counts (key, count) VALUES ($1, 1)
ON CONFLICT (key) DO UPDATE SET count = bench_counts.count + 1
WHERE bench_counts.count < $2 RETURNING count
"""
PER_CONNECTION_DOWN = "UPDATE bench_counts SET count = count - 1 WHERE key = $1"


def _report(what: str, samples: list[float]) -> None:
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(f"{what:58s} median {p50 * 1e6:9.1f} us   p99 {p99 * 1e6:9.1f} us")


async def _timed(rounds: int, step: Callable[[int], Awaitable[Any]]) -> list[float]:
    samples = []
    for n in range(rounds):
        started = time.perf_counter()
        await step(n)
        samples.append(time.perf_counter() - started)
    return samples


async def run(dsn: str, rounds: int) -> None:
    counts = SharedCounts(80_000, 32)
    samples = []
    for n in range(rounds):
        started = time.perf_counter()
        counts.add(f"a:192.0.2.{n % 250}", 1, 50)
        counts.add(f"a:192.0.2.{n % 250}", -1)
        samples.append(time.perf_counter() - started)
    _report("shared memory: take + give back a connection slot", samples)

    connection = await asyncpg.connect(dsn)
    try:
        await schema.upgrade(connection)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS bench_counts (key text PRIMARY KEY, count int NOT NULL)"
        )

        async def per_connection(n: int) -> None:
            await connection.fetchval(PER_CONNECTION_UP, f"a:192.0.2.{n % 250}", 50)
            await connection.execute(PER_CONNECTION_DOWN, f"a:192.0.2.{n % 250}")

        _report(
            "database: write per accept + per close (not used)",
            await _timed(rounds, per_connection),
        )
        for other in range(3):  # three other nodes publishing 1,000 keys each
            keys = [f"a:198.51.{other}.{k}" for k in range(1000)]
            await connection.execute(
                PUBLISH.split("SELECT u.key")[0] + "SELECT 1",
                f"other-{other}",
                1,
                keys,
                [1] * len(keys),
                3600.0,
            )
        for size in (10, 1000, 10_000):
            keys = [f"a:203.0.{k // 250}.{k % 250}" for k in range(size)]
            values = [1] * size

            async def publish(n: int, keys: list[str] = keys, values: list[int] = values) -> None:
                await connection.fetch(PUBLISH, "this-node", 1, keys, values, 6.0)

            _report(
                f"database: one publishing round, {size} keys out, 3,000 in",
                await _timed(max(20, rounds // 20), publish),
            )
    finally:
        await connection.close()

    policy = PenaltyPolicy(base=0.0, cap=15.0)
    pool = LazyPool(dsn, size=1)
    state = ClusterPenaltyState(pool, policy, LocalPenaltyState(policy, slots=64))
    try:

        async def attempt(n: int) -> None:
            await state.reserve(f"192.0.2.{n % 250}")
            await state.failed(f"192.0.2.{n % 250}")

        await attempt(0)  # the pool's first connection and its schema check
        samples = await _timed(rounds, attempt)
        _report("database: a failed login's penalty (reserve + failed)", samples)
    finally:
        await pool.aclose()


@contextlib.contextmanager
def _database(dsn: str | None) -> Iterator[str]:
    if dsn is not None:
        yield dsn
        return
    from tests.support.postgres import running_postgres

    with running_postgres() as server:
        yield server.database("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    with _database(args.dsn) as dsn:
        asyncio.run(run(dsn, args.rounds))


if __name__ == "__main__":
    main()
