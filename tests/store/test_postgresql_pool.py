"""The PostgreSQL store's pool (:mod:`mailslot.store.postgresql.pool`): a connection given
back cleanly is kept for the next statement, anything else goes through asyncpg's release,
and what is kept is never a broken or busy connection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
from tests.support.postgres import PostgresServer

from mailslot.store.postgresql.pool import LazyPool, usable

from .conftest import run


@pytest.fixture
def dsn(postgres: PostgresServer) -> Iterator[str]:
    yield postgres.upgraded("pool")


async def _backend(pool: LazyPool) -> int:
    async with pool.acquire() as connection:
        return int(await connection.fetchval("SELECT pg_backend_pid()"))


def test_a_connection_given_back_cleanly_serves_the_next_statement(dsn: str) -> None:
    async def scenario() -> None:
        pool = LazyPool(dsn, size=2)
        first = await _backend(pool)
        assert [await _backend(pool) for _ in range(5)] == [first] * 5
        await pool.aclose()

    run(scenario())


def test_an_error_inside_a_transaction_leaves_no_transaction_behind(dsn: str) -> None:
    async def scenario() -> None:
        pool = LazyPool(dsn, size=1)
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("CREATE TEMP TABLE t (x int)")
                await connection.fetchval("SELECT 1 / 0")
        async with pool.acquire() as connection:
            assert not connection.is_in_transaction()
            # The transaction was rolled back: its temporary table is gone.
            assert await connection.fetchval("SELECT to_regclass('pg_temp.t')") is None
        await pool.aclose()

    run(scenario())


def test_a_block_left_by_an_exception_does_not_keep_its_connection(dsn: str) -> None:
    async def scenario() -> None:
        pool = LazyPool(dsn, size=2)
        with pytest.raises(RuntimeError):
            async with pool.acquire() as connection:
                await connection.fetchval("SELECT 1")
                raise RuntimeError("the caller's own failure")
        assert pool._idle == []
        await pool.aclose()

    run(scenario())


def test_a_kept_connection_the_server_closed_is_replaced(dsn: str) -> None:
    async def scenario() -> None:
        pool = LazyPool(dsn, size=1)
        killed = await _backend(pool)
        admin = await asyncpg.connect(dsn)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", killed)
        finally:
            await admin.close()
        ((connection, _),) = pool._idle
        for _ in range(100):  # the client sees the server's close on its next read
            if not usable(connection):
                break
            await asyncio.sleep(0.01)
        assert not usable(connection)
        assert await _backend(pool) != killed
        await pool.aclose()

    run(scenario())


def test_a_waiter_gets_the_connection_given_back(dsn: str) -> None:
    async def scenario() -> None:
        pool = LazyPool(dsn, size=1, connect_timeout=5.0)
        holding = asyncio.Event()
        done = asyncio.Event()

        async def holder() -> int:
            async with pool.acquire() as connection:
                holding.set()
                await done.wait()
                return int(await connection.fetchval("SELECT pg_backend_pid()"))

        first = asyncio.create_task(holder())
        await holding.wait()
        second = asyncio.create_task(_backend(pool))
        for _ in range(1000):  # until the second one waits
            if pool._waiters:
                break
            await asyncio.sleep(0)
        assert len(pool._waiters) == 1
        done.set()
        # Handed over, not back through asyncpg: the same backend, one connection held.
        assert await first == await second
        assert pool._held == 1
        await pool.aclose()

    run(scenario())


def test_more_statements_than_connections_share_them(dsn: str) -> None:
    async def scenario() -> None:
        pool = LazyPool(dsn, size=2, connect_timeout=5.0)
        backends = await asyncio.gather(*(_backend(pool) for _ in range(20)))
        assert len(set(backends)) <= 2 and pool._held <= 2
        await pool.aclose()

    run(scenario())


def test_a_connection_that_failed_makes_room_for_a_waiter(dsn: str) -> None:
    async def scenario() -> None:
        pool = LazyPool(dsn, size=1, connect_timeout=5.0)
        holding = asyncio.Event()
        done = asyncio.Event()

        async def failing() -> None:
            async with pool.acquire() as connection:
                holding.set()
                await done.wait()
                await connection.fetchval("SELECT 1 / 0")

        first = asyncio.create_task(failing())
        await holding.wait()
        second = asyncio.create_task(_backend(pool))
        for _ in range(1000):
            if pool._waiters:
                break
            await asyncio.sleep(0)
        done.set()
        with pytest.raises(asyncpg.DivisionByZeroError):
            await first
        assert isinstance(await asyncio.wait_for(second, 10), int)
        assert pool._held == 1
        await pool.aclose()

    run(scenario())


def test_a_waiter_gives_up_at_the_connect_timeout(dsn: str) -> None:
    async def scenario() -> None:
        pool = LazyPool(dsn, size=1, connect_timeout=0.2)
        async with pool.acquire():
            with pytest.raises(TimeoutError):
                await _backend(pool)
        assert not pool._waiters or all(w.done() for w in pool._waiters)
        await _backend(pool)  # the pool still serves
        await pool.aclose()

    run(scenario())


def test_connections_kept_idle_go_back_to_asyncpg_and_close_does_not_wait(dsn: str) -> None:
    async def scenario() -> None:
        pool = LazyPool(dsn, size=2)
        await _backend(pool)
        assert len(pool._idle) == 1 and pool._sweeper is not None
        connection, _ = pool._idle[0]
        pool._idle[0] = (connection, -1e9)  # idle since long ago
        pool._sweep()
        assert pool._idle == [] and pool._sweeper is None
        await asyncio.gather(*pool._returning)
        await _backend(pool)  # kept again
        await asyncio.wait_for(pool.aclose(), 10)  # releases what it keeps before closing

    run(scenario())
