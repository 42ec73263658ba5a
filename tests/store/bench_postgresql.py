"""Time the PostgreSQL store (not a test: no timing thresholds in tests).

    PYTHONPATH=src python tests/store/bench_postgresql.py [count]

Starts a private PostgreSQL (tests/support/postgres.py), fills one maildrop with ``count``
messages (default 100,000) and one 20 MiB message in another, then prints the median of
five runs of: the login snapshot (``PostgresStore.open`` + close: account, lease, snapshot,
release), a whole RETR of the 20 MiB message in the session's 64 KiB chunks, and a TOP's
first chunk of it.  Unlike the test cluster's, this one keeps ``fsync`` off too: the figures
are of reads.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.postgres import running_postgres

from mailslot.store.postgresql import PostgresStore, schema

BODY = b"From: a@example.org\nSubject: hello\n\n" + b"body line\n" * 40


async def fill(dsn: str, count: int) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await schema.upgrade(connection)
        store = PostgresStore(dsn, node="bench")
        await store.deliver("big", BODY)  # makes the account
        await store.deliver("huge", b"Subject: huge\n\n" + (b"x" * 79 + b"\n") * (20 * 2**20 // 80))
        await store.aclose()
        wire = len(BODY) + BODY.count(b"\n")
        # The same rows deliver() writes, made in bulk.
        await connection.execute(
            """
            WITH account AS (SELECT account_id, uid_prefix FROM mailslot_accounts
                             WHERE name = 'big'),
            m AS (INSERT INTO mailslot_messages
                      (account_id, seq, uidl, wire_size, stored_size, header_size)
                  SELECT account_id, s, uid_prefix || '.' || s, $2, $3, 36
                  FROM account, generate_series(2, $1 + 1) s RETURNING account_id, seq)
            INSERT INTO mailslot_bodies SELECT account_id, seq, $4 FROM m
            """,
            count - 1,
            wire,
            len(BODY),
            BODY,
        )
        await connection.execute(
            "UPDATE mailslot_accounts SET next_seq = $1 + 1 WHERE name = 'big'", count
        )
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()


async def measure(dsn: str) -> None:
    store = PostgresStore(dsn, node="bench")

    async def login() -> int:
        maildrop = await store.open("big")
        count = len(maildrop.messages)
        await maildrop.close()
        return count

    async def retr() -> int:
        maildrop = await store.open("huge")
        total = 0
        async for chunk in maildrop.read(maildrop.messages[0], 65536):
            total += len(chunk)
        await maildrop.close()
        return total

    async def top() -> int:
        maildrop = await store.open("huge")
        stream = maildrop.read(maildrop.messages[0], 65536)
        first = await anext(stream)
        await stream.aclose()
        await maildrop.close()
        return len(first)

    for name, action in (("login snapshot", login), ("RETR 20 MiB", retr), ("TOP", top)):
        await action()  # warm the cache
        times = []
        for _ in range(5):
            start = time.perf_counter()
            result = await action()
            times.append(time.perf_counter() - start)
        print(f"{name}: {statistics.median(times) * 1000:.1f} ms median of 5 ({result})")
    await store.aclose()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with running_postgres() as postgres:
        dsn = postgres.database("bench")
        asyncio.run(fill(dsn, count))
        asyncio.run(measure(dsn))


if __name__ == "__main__":
    main()
