"""The ``mailslot-pg`` variant's data: users and maildrops in PostgreSQL, and what a session
costs the database (statements from ``pg_stat_statements``, transactions, CPU).

The load users' maildrops are delivered through the store itself (``PostgresStore.deliver``,
the path LMTP and ``mailslot deliver`` take).  The 100,000-message bigbox is written with one
bulk statement per table that fills the same columns the store's DELIVER statement fills
(UIDL ``<uid_prefix>.<seq>``, CRLF wire size, stored size, header length): delivering it one
message at a time would take minutes per rep and measures delivery, not the login.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.corpus import PASSWORD, Corpus

# The statements a session sends, as pg_stat_statements sees them; its own queries and the
# benchmark's are left out by this filter.
_COUNT = """
SELECT coalesce(sum(s.calls), 0)::bigint AS calls
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database()
  AND s.query NOT ILIKE '%pg_stat%' AND s.query NOT ILIKE '%mailslot_bench%'
  -- asyncpg's default pool reset is four statements in one simple-query round trip:
  -- counted once, as its pg_advisory_unlock_all().
  AND s.query NOT IN ('CLOSE ALL', 'UNLISTEN *', 'RESET ALL')
  -- The cluster limits' publishing runs every [limits] cluster_refresh seconds per worker,
  -- whatever the sessions: a cost per second, not per session.
  AND s.query NOT ILIKE '%mailslot_limit_counts%'
  -- The body of mailslot_penalty_gap(), run by the planner when it folds the IMMUTABLE
  -- function over a custom plan's constant arguments: pg_stat_statements lists it as a
  -- top-level statement (the planner is not the executor's nesting), but nothing is sent.
  AND s.query NOT ILIKE 'SELECT CASE WHEN base <=%'
"""

_BY_STATEMENT = """
SELECT calls, regexp_replace(left(query, 60), '\\s+', ' ', 'g') AS query
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database()
  AND s.query NOT ILIKE '%pg_stat%' AND s.query NOT ILIKE '%mailslot_bench%'
ORDER BY calls DESC
"""

# The same statements with their mean execution time in the backend (planning not included).
_TIMES = """
SELECT calls, mean_exec_time, regexp_replace(left(query, 60), '\\s+', ' ', 'g') AS query
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database()
  AND s.query NOT ILIKE '%pg_stat%' AND s.query NOT ILIKE '%mailslot_bench%'
ORDER BY total_exec_time DESC
"""


async def _connect(dsn: str) -> Any:
    import asyncpg

    return await asyncpg.connect(dsn)


async def _load_users(dsn: str, users: list[str], home_root: Path) -> None:
    connection = await _connect(dsn)
    try:
        await connection.copy_records_to_table(
            "mailslot_users",
            records=[(u, f"{{PLAIN}}{PASSWORD}", str(home_root / u)) for u in users],
            columns=["name", "password", "home"],
        )
    finally:
        await connection.close()


async def _deliver(dsn: str, drops: dict[str, list[bytes]]) -> None:
    from mailslot.store.postgresql.store import PostgresStore

    store = PostgresStore(dsn, pool_size=4, node="bench-loader")
    try:
        for user, messages in drops.items():
            for data in messages:
                await store.deliver(user, data)
    finally:
        await store.aclose()


def deliver(dsn: str, user: str, data: bytes) -> None:
    """One message through the store (as LMTP delivers it)."""
    asyncio.run(_deliver(dsn, {user: [data]}))


def load(
    dsn: str, data: Corpus, users: list[str], drops: Mapping[str, Iterable[int]], home: Path
) -> None:
    """``users`` into mailslot_users; each ``drops[user]`` (corpus idents) delivered in order."""
    asyncio.run(_load_users(dsn, users, home))
    raw = {u: [data.templates[i].read_bytes() for i in idents] for u, idents in drops.items()}
    asyncio.run(_deliver(dsn, raw))


async def _bulk(dsn: str, user: str, bodies: list[bytes]) -> None:
    from mailslot.store.postgresql.store import header_length
    from mailslot.store.wiresize import wire_size

    connection = await _connect(dsn)
    try:
        async with connection.transaction():
            # The rows are consistent by construction: skip the per-row foreign-key triggers
            # (superuser, the private cluster), which made a 100,000-row COPY take minutes.
            await connection.execute("SET LOCAL session_replication_role = replica")
            account = await connection.fetchval(
                "INSERT INTO mailslot_accounts (name) VALUES ($1) RETURNING account_id", user
            )
            distinct = {id(b): b for b in bodies}
            meta = {k: (wire_size(b), len(b), header_length(b)) for k, b in distinct.items()}
            n = len(bodies)
            await connection.execute(
                "/* mailslot_bench */ INSERT INTO mailslot_messages "
                "(account_id, seq, uidl, wire_size, stored_size, header_size) "
                "SELECT $1, s, a.uid_prefix || '.' || s, w, st, h "
                "FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) "
                "AS t(s, w, st, h), mailslot_accounts a WHERE a.account_id = $1",
                account,
                list(range(1, n + 1)),
                [meta[id(b)][0] for b in bodies],
                [meta[id(b)][1] for b in bodies],
                [meta[id(b)][2] for b in bodies],
            )
            await connection.copy_records_to_table(
                "mailslot_bodies",
                records=((account, k + 1, b) for k, b in enumerate(bodies)),
                columns=["account_id", "seq", "body"],
            )
            await connection.execute(
                "/* mailslot_bench */ UPDATE mailslot_accounts SET next_seq = $2 "
                "WHERE account_id = $1",
                account,
                n + 1,
            )
    finally:
        await connection.close()


def bulk_maildrop(dsn: str, data: Corpus, user: str, idents: list[int]) -> None:
    templates = {i: data.templates[i].read_bytes() for i in set(idents)}
    asyncio.run(_bulk(dsn, user, [templates[i] for i in idents]))


def drop_account(dsn: str, user: str) -> None:
    async def run() -> None:
        connection = await _connect(dsn)
        try:
            await connection.execute(
                "/* mailslot_bench */ DELETE FROM mailslot_accounts WHERE name = $1", user
            )
        finally:
            await connection.close()

    asyncio.run(run())


@dataclass(frozen=True)
class Counts:
    statements: int  # pg_stat_statements calls: each one a round trip (extended protocol)


def counts(dsn: str) -> Counts:
    async def run() -> Counts:
        connection = await _connect(dsn)
        try:
            row = await connection.fetchrow(_COUNT)
            return Counts(int(row["calls"]))
        finally:
            await connection.close()

    return asyncio.run(run())


def by_statement(dsn: str) -> list[tuple[int, str]]:
    async def run() -> list[tuple[int, str]]:
        connection = await _connect(dsn)
        try:
            return [
                (int(r["calls"]), str(r["query"])) for r in await connection.fetch(_BY_STATEMENT)
            ]
        finally:
            await connection.close()

    return asyncio.run(run())


def reset_statements(dsn: str) -> None:
    async def run() -> None:
        connection = await _connect(dsn)
        try:
            await connection.execute("SELECT pg_stat_statements_reset()")
        finally:
            await connection.close()

    asyncio.run(run())


def statement_times(dsn: str) -> list[tuple[int, float, str]]:
    """(calls, mean execution ms, query's start) of each statement since the last reset."""

    async def run() -> list[tuple[int, float, str]]:
        connection = await _connect(dsn)
        try:
            rows = await connection.fetch(_TIMES)
            return [(int(r["calls"]), float(r["mean_exec_time"]), str(r["query"])) for r in rows]
        finally:
            await connection.close()

    return asyncio.run(run())
