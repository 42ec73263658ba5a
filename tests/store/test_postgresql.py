"""What only the PostgreSQL store has: the lease across processes and nodes (RFC 1939
section 8's exclusive lock), its fencing of QUIT, streaming from the database, the schema
check, and a database that is not there.  The shared contract is in test_contract.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from tests.support.postgres import PostgresServer
from tests.support.server import free_port

from mailslot.store.base import MaildropLocked, MessageGone, TemporaryFailure
from mailslot.store.postgresql import PostgresStore, queries, schema
from mailslot.store.postgresql.store import DB_CHUNK, header_length

from .conftest import read_all, run


async def _sql(dsn: str, statement: str, *args: object) -> object:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(statement, *args)
    finally:
        await connection.close()


@pytest.fixture
def dsn(postgres: PostgresServer) -> Iterator[str]:
    yield postgres.upgraded("store")


def store_on(dsn: str, node: str = "n1", lease: float = 30.0) -> PostgresStore:
    return PostgresStore(dsn, pool_size=2, lease_seconds=lease, node=node)


async def expire_leases(dsn: str) -> None:
    """As if every holder had stopped renewing a lifetime ago (the database's clock)."""
    await _sql(dsn, "UPDATE mailslot_leases SET expires = now() - interval '1 second'")


def test_racing_acquirers_across_stores_have_exactly_one_winner(dsn: str) -> None:
    """40 stores (as 40 worker processes on many nodes) log alice in at once, 30 times."""

    async def scenario() -> None:
        stores = [store_on(dsn, f"node{n}") for n in range(40)]
        await stores[0].deliver("alice", b"x\n")
        for round_ in range(30):
            results = await asyncio.gather(
                *(store.open("alice") for store in stores), return_exceptions=True
            )
            winners = [r for r in results if not isinstance(r, BaseException)]
            losers = [r for r in results if isinstance(r, BaseException)]
            assert len(winners) == 1, round_
            assert all(isinstance(r, MaildropLocked) for r in losers), losers
            await winners[0].close()
        for store in stores:
            await store.aclose()

    run(scenario())


def test_an_expired_lease_is_taken_over_and_the_old_holder_deletes_nothing(dsn: str) -> None:
    async def scenario() -> None:
        first, second = store_on(dsn, "a"), store_on(dsn, "b")
        await first.deliver("alice", b"one\n")
        await first.deliver("alice", b"two\n")
        frozen = await first.open("alice")
        with pytest.raises(MaildropLocked):
            await second.open("alice")
        await expire_leases(dsn)  # the holder froze past its lease
        taker = await second.open("alice")
        with pytest.raises(TemporaryFailure, match="lease was lost"):
            await frozen.delete(frozen.messages)
        assert frozen.lease.lost
        await frozen.close()  # must not release the taker's lease
        with pytest.raises(MaildropLocked):
            await first.open("alice")
        assert len(taker.messages) == 2
        await taker.delete(taker.messages[:1])
        await taker.close()
        again = await first.open("alice")
        assert [await read_all(again, m) for m in again.messages] == [b"two\n"]
        await again.close()

    run(scenario())


def test_an_expired_lease_nobody_took_still_fences_correctly(dsn: str) -> None:
    """Expired but not taken: the token is still the holder's, and its deletion is safe
    (a later acquirer waits for the deletion's row lock, then snapshots after it)."""

    async def scenario() -> None:
        store = store_on(dsn)
        await store.deliver("alice", b"one\n")
        maildrop = await store.open("alice")
        await expire_leases(dsn)
        await maildrop.delete(maildrop.messages)
        await maildrop.close()
        maildrop = await store.open("alice")
        assert list(maildrop.messages) == []
        await maildrop.close()

    run(scenario())


async def _waiting_for_a_lock(dsn: str, text: str) -> None:
    """Return once a backend running a statement containing ``text`` waits for a lock."""
    for _ in range(3000):
        if await _sql(
            dsn,
            "SELECT count(*) > 0 FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND position($1 in query) > 0",
            text,
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no statement with {text!r} waits for a lock")


def test_a_login_waiting_for_a_quit_that_deletes_lists_none_of_what_it_deleted(
    dsn: str,
) -> None:
    """The login's one statement reads the listing with a snapshot taken before the lease,
    which it may have waited for (a QUIT deleting holds the lease row's lock until its
    commit): the generation check reads the listing again, so nothing deleted comes back
    (queries.LOGIN).  The QUIT is held open at the point of its commit by a transaction."""

    async def scenario() -> None:
        store = store_on(dsn)
        for n in range(3):
            await store.deliver("alice", b"message %d\n" % n)
        holder = await store.open("alice")
        await holder.lease.stop()
        seqs = [int(m.key.partition("/")[2]) for m in holder.messages[:2]]
        quit_ = await asyncpg.connect(dsn)
        try:
            transaction = quit_.transaction()
            await transaction.start()
            ours, deleted, bumped = await quit_.fetchrow(
                queries.QUIT_DELETE, holder.lease.account, holder.lease.token, seqs
            )
            assert (ours, deleted, bumped) == (True, 2, 1)
            login = asyncio.ensure_future(store_on(dsn, "other").open("alice"))
            await _waiting_for_a_lock(dsn, "mailslot_penalty")
            assert not login.done()
            await transaction.commit()
            taker = await login
        finally:
            await quit_.close()
        assert [await read_all(taker, m) for m in taker.messages] == [b"message 2\n"]
        await taker.close()

    run(scenario())


def test_a_starting_node_clears_only_its_own_leases(dsn: str) -> None:
    async def scenario() -> None:
        mine, theirs = store_on(dsn, "me"), store_on(dsn, "them")
        await mine.open("alice")  # never closed: this node "crashed"
        await theirs.open("bob")
        assert await store_on(dsn, "me").clear_node_leases() == 1
        taken = await theirs.open("alice")
        with pytest.raises(MaildropLocked):
            await mine.open("bob")
        await taken.close()

    run(scenario())


def test_the_lease_is_renewed_by_the_holder(dsn: str) -> None:
    async def scenario() -> None:
        store = store_on(dsn, lease=1.0)
        maildrop = await store.open("alice")
        first = await _sql(dsn, "SELECT expires FROM mailslot_leases")
        # Polls for the renewal (every third of the lifetime); not a threshold.
        for _ in range(50):
            await asyncio.sleep(0.1)
            if await _sql(dsn, "SELECT expires FROM mailslot_leases") != first:
                break
        else:
            pytest.fail("the lease was never renewed")
        await maildrop.close()
        assert await _sql(dsn, "SELECT count(*) FROM mailslot_leases") == 0

    run(scenario())


def test_a_large_message_streams_in_bounded_chunks_and_top_stops_early(dsn: str) -> None:
    body = b"Subject: big\n\n" + b"0123456789abcdef" * (3 * 1024 * 1024 // 16)

    async def scenario() -> None:
        store = store_on(dsn)
        await store.deliver("alice", body)
        maildrop = await store.open("alice")
        (message,) = maildrop.messages
        queries = 0
        connection = store.connection

        def counted() -> Any:
            nonlocal queries
            queries += 1
            return connection()

        store.connection = counted  # type: ignore[method-assign]
        chunks = [chunk async for chunk in maildrop.read(message, 65536)]
        assert max(len(c) for c in chunks) == 65536
        assert b"".join(chunks) == body
        # One substring() of 256 KiB per query: never the whole message at once.
        assert queries == len(body) // DB_CHUNK + 1
        # A reader that stops after the first chunk (TOP) fetched one substring only.
        queries = 0
        stream = maildrop.read(message, 65536)
        assert (await anext(stream)).startswith(b"Subject: big\n\n")
        await stream.aclose()
        assert queries == 1
        await maildrop.close()

    run(scenario())


def _counting(store: PostgresStore) -> list[int]:
    """Count the store's trips for a connection (one statement each in read())."""
    trips = [0]
    connection = store.connection

    def counted() -> Any:
        trips[0] += 1
        return connection()

    store.connection = counted  # type: ignore[method-assign]
    return trips


def test_pipelined_reads_bring_the_next_small_messages_in_one_query(dsn: str) -> None:
    bodies = [b"Subject: %d\n\n" % n + b"x" * (40_000 + n) for n in range(8)]

    async def scenario() -> None:
        store = store_on(dsn)
        for body in bodies:
            await store.deliver("alice", body)
        maildrop = await store.open("alice")
        messages = list(maildrop.messages)
        trips = _counting(store)
        maildrop.read_ahead(True)
        got = [await read_all(maildrop, m) for m in messages]
        assert got == bodies
        # Six of these fit in 256 KiB: two queries for eight messages, not eight.
        assert trips[0] == 2
        await maildrop.close()

    run(scenario())


def test_what_was_read_ahead_is_dropped_when_the_session_waits(dsn: str) -> None:
    """Read ahead, then the message is removed behind the server's back: served from what was
    read while the client's commands were in; gone once the session waited for the client."""
    bodies = [b"Subject: %d\n\nbody\n" % n for n in range(3)]

    async def scenario() -> None:
        store = store_on(dsn)
        for body in bodies:
            await store.deliver("alice", body)
        maildrop = await store.open("alice")
        first, second, third = maildrop.messages
        maildrop.read_ahead(True)
        assert await read_all(maildrop, first) == bodies[0]
        for message in (second, third):
            seq = int(message.key.partition("/")[2])
            await _sql(dsn, "DELETE FROM mailslot_messages WHERE seq = $1", seq)
        assert await read_all(maildrop, second) == bodies[1]
        maildrop.read_ahead(False)
        with pytest.raises(MessageGone):
            await read_all(maildrop, third)
        await maildrop.close()

    run(scenario())


def test_no_read_ahead_without_pipelining_nor_past_one_chunk(dsn: str) -> None:
    small = b"Subject: small\n\nbody\n"
    large = b"Subject: large\n\n" + b"y" * DB_CHUNK

    async def scenario() -> None:
        store = store_on(dsn)
        for body in (small, small, large, small):
            await store.deliver("alice", body)
        maildrop = await store.open("alice")
        one, two, big, four = maildrop.messages
        trips = _counting(store)
        assert await read_all(maildrop, one) == small  # the client sent nothing more
        assert trips[0] == 1 and not maildrop._ahead
        maildrop.read_ahead(True)
        assert await read_all(maildrop, two) == small  # the large one does not come along
        assert trips[0] == 2 and not maildrop._ahead
        assert await read_all(maildrop, big) == large  # too large to bring others
        assert await read_all(maildrop, four) == small
        assert trips[0] == 2 + 2 + 1
        await maildrop.close()

    run(scenario())


@pytest.mark.parametrize(
    ("data", "length"),
    [
        (b"Subject: x\n\nbody\n", 12),
        (b"Subject: x\r\n\r\nbody\r\n", 14),
        (b"\nbody", 1),
        (b"\r\nbody", 2),
        (b"Subject: only a header\n", 23),
        (b"", 0),
    ],
)
def test_header_length(data: bytes, length: int) -> None:
    assert header_length(data) == length


def test_a_schema_too_new_or_missing_is_a_temporary_failure_naming_the_fix(
    postgres: PostgresServer, dsn: str
) -> None:
    empty = postgres.database("empty")

    async def scenario() -> None:
        missing = store_on(empty)
        with pytest.raises(TemporaryFailure, match="mailslot db upgrade --config"):
            await missing.open("alice")
        await _sql(dsn, "INSERT INTO mailslot_schema (version) VALUES (999)")
        with pytest.raises(TemporaryFailure, match=r"needs [0-9]+: it was upgraded by a newer"):
            await store_on(dsn).open("alice")

    run(scenario())


def test_a_database_that_is_not_there_is_a_temporary_failure() -> None:
    async def scenario() -> None:
        store = PostgresStore(
            f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout=2.0
        )
        with pytest.raises(TemporaryFailure, match="database"):
            await store.open("alice")
        with pytest.raises(TemporaryFailure):
            await store.deliver("alice", b"x\n")

    run(scenario())


def test_upgrade_twice_is_harmless(dsn: str) -> None:
    latest = schema.latest()

    async def scenario() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            assert await schema.upgrade(connection) == (latest, latest)
            assert await schema.current(connection) == latest
        finally:
            await connection.close()

    run(scenario())


def test_upgrade_from_each_earlier_version_keeps_the_mail(postgres: PostgresServer) -> None:
    for start in range(1, schema.latest()):
        dsn = postgres.database("old")

        async def scenario(dsn: str = dsn, start: int = start) -> None:
            connection = await asyncpg.connect(dsn)
            try:
                assert await schema.upgrade(connection, target=start) == (0, start)
                with pytest.raises(schema.SchemaMismatch, match="db upgrade"):
                    await schema.check(connection)
                await connection.execute(
                    "INSERT INTO mailslot_accounts (name) VALUES ('alice');"
                    "INSERT INTO mailslot_messages VALUES (1, 1, 'u.1', 3, 2, 0, now());"
                    "INSERT INTO mailslot_bodies VALUES (1, 1, 'x\n')"
                )
                assert await schema.upgrade(connection) == (start, schema.latest())
                await schema.check(connection)
            finally:
                await connection.close()
            store = store_on(dsn)
            maildrop = await store.open("alice")
            assert [await read_all(maildrop, m) for m in maildrop.messages] == [b"x\n"]
            await maildrop.close()
            await store.aclose()

        run(scenario())


def test_two_upgrades_at_once_apply_each_migration_once(postgres: PostgresServer) -> None:
    """Two nodes running ``mailslot db upgrade`` at the same moment."""
    dsn = postgres.database("race")
    latest = schema.latest()

    async def scenario() -> None:
        connections = [await asyncpg.connect(dsn) for _ in range(2)]
        try:
            results = await asyncio.gather(*(schema.upgrade(c) for c in connections))
            assert sorted(results) == [(0, latest), (latest, latest)]
            count = await connections[0].fetchval("SELECT count(*) FROM mailslot_schema")
            assert count == latest
        finally:
            for connection in connections:
                await connection.close()

    run(scenario())


def test_a_database_that_stops_answering_fails_the_statement(dsn: str) -> None:
    """A statement that gets no answer (here: pg_sleep) ends at the command timeout."""
    from mailslot.store.postgresql.pool import LazyPool

    async def scenario() -> None:
        store = PostgresStore(LazyPool(dsn, size=1, command_timeout=0.5))
        with pytest.raises(TemporaryFailure, match="Timeout"):
            async with store.connection() as connection:
                await connection.execute("SELECT pg_sleep(30)")
        maildrop = await store.open("alice")  # the pool recovers
        await maildrop.close()
        await store.aclose()

    run(scenario())
