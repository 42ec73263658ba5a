"""A large message is migrated in chunks (mailslot.store.postgresql.bodies): its bytes, size
and header length (TOP, RFC 1939 section 7) arrive as they were, in its place (section 5's
order) and UIDL (section 7); a copy that fails half-way commits nothing of it and the next
run copies it once.  No memory is measured here (benchmarks/migrate_memory.py does)."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.maildir import MaildirBuilder
from tests.support.postgres import PostgresServer

from mailslot.migration.copy import Batches, Migrator
from mailslot.migration.progress import Progress
from mailslot.migration.verify import verify_user
from mailslot.store.base import MessageInfo
from mailslot.store.maildir import MaildirStore
from mailslot.store.postgresql import PostgresStore
from mailslot.store.postgresql.bodies import BodyChanged, BodyScan, copy_body
from mailslot.store.postgresql.store import DB_CHUNK, header_length

BIG = 3 * 1024 * 1024 + 12345  # a dozen DB_CHUNKs and a piece; over Batches.whole


@given(
    st.binary(max_size=60).map(lambda b: bytes(b"ab\r\n"[x % 4] for x in b)),
    st.lists(st.integers(min_value=0, max_value=60), max_size=6),
)
def test_the_scan_finds_the_header_length_of_the_whole_however_it_is_cut(
    data: bytes, cuts: list[int]
) -> None:
    scan = BodyScan()
    at = 0
    for cut in [*sorted(cuts), len(data)]:
        scan.feed(data[at : max(at, cut)])
        at = max(at, cut)
    assert (scan.length, scan.header) == (len(data), header_length(data))


def big_message() -> bytes:
    header = b"From: a@example.org\nSubject: attachment\nContent-Type: application/pdf\n\n"
    body = os.urandom(BIG // 2).hex().encode()
    lines = b"\n".join(body[i : i + 76] for i in range(0, len(body), 76))
    return header + lines[: BIG - len(header) - 1] + b"\n"


@pytest.fixture
def dsn(postgres: PostgresServer) -> Iterator[str]:
    yield postgres.upgraded("stream")


async def rows(dsn: str, query: str, *args: object) -> list[Any]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


class Crash(Exception):
    """The process dying: its connection goes, its open transaction is rolled back."""


class FailingMaildirs:
    """The Maildir store, whose maildrops' reads of ``fail`` raise :class:`Crash` after a
    chunk, from the ``after``-th read on: as if the migration died during that message."""

    def __init__(self, store: MaildirStore, fail: bytes, after: int) -> None:
        self._store, self._fail, self._after, self.reads = store, fail, after, 0

    async def open(self, user: str, home: str | None = None, **kw: Any) -> Any:
        maildrop = await self._store.open(user, home, **kw)
        outer = self

        class Maildrop:
            messages = maildrop.messages
            close = maildrop.close

            async def read(self, message: MessageInfo, size: int = 65536) -> AsyncIterator[bytes]:
                chunks = maildrop.read(message, size)
                if message.size < len(outer._fail):
                    async for chunk in chunks:
                        yield chunk
                    return
                outer.reads += 1
                async for chunk in chunks:
                    yield chunk
                    if outer.reads >= outer._after:
                        raise Crash

        return Maildrop()


def migrate(dsn: str, maildirs: Any) -> Awaitable[Any]:
    async def go() -> Any:
        database = PostgresStore(dsn, pool_size=2, node="test")
        try:
            migrator = Migrator(maildirs, database, Progress(0, 0, io.StringIO()), Batches(3))
            return await migrator.migrate("alice", None)
        finally:
            await database.aclose()

    return go()


def build(tmp_path: Path) -> tuple[MaildirStore, list[bytes]]:
    builder = MaildirBuilder(tmp_path / "alice" / "Maildir")
    messages = [b"Subject: %d\n\nsmall\n" % n for n in range(4)]
    messages[2:2] = [big_message()]
    builder.add_all(messages)
    return MaildirStore(f"{tmp_path}/{{user}}/Maildir"), messages


def test_a_large_message_arrives_whole_in_its_place(tmp_path: Path, dsn: str) -> None:
    maildirs, messages = build(tmp_path)

    async def scenario() -> None:
        outcome = await migrate(dsn, maildirs)
        assert outcome.copied == 5
        old = await maildirs.open("alice")
        listing = [(m.uid, m.size) for m in old.messages]
        await old.close()
        database = PostgresStore(dsn, pool_size=2, node="test")
        try:
            new = await database.open("alice")
            assert [(m.uid, m.size) for m in new.messages] == listing
            got = [b"".join([c async for c in new.read(m)]) for m in new.messages]
            await new.close()
            assert got == messages
            assert await verify_user("alice", None, maildirs, database) == []
        finally:
            await database.aclose()
        stored = await rows(
            dsn, "SELECT stored_size, header_size FROM mailslot_messages ORDER BY seq"
        )
        assert [tuple(r) for r in stored] == [(len(m), header_length(m)) for m in messages]

    asyncio.run(scenario())


@pytest.mark.parametrize("after", [1, 2])  # killed while measuring it, or while copying it
def test_a_copy_killed_during_a_large_message_commits_none_of_it_and_goes_on(
    tmp_path: Path, dsn: str, after: int
) -> None:
    maildirs, messages = build(tmp_path)

    async def scenario() -> None:
        failing = FailingMaildirs(maildirs, messages[2], after)
        with pytest.raises(Crash):
            await migrate(dsn, failing)
        # The two before it committed (a batch); of the big one, no row and no body.
        assert [r[0] for r in await rows(dsn, "SELECT stored_size FROM mailslot_messages")] == [
            len(m) for m in messages[:2]
        ]
        assert len(await rows(dsn, "SELECT 1 FROM mailslot_bodies")) == 2
        assert (await rows(dsn, "SELECT node FROM mailslot_leases"))[0][0] == "mailslot-migrate"
        outcome = await migrate(dsn, maildirs)
        assert (outcome.present, outcome.copied) == (2, 3)
        sizes = await rows(dsn, "SELECT count(*), count(DISTINCT uidl) FROM mailslot_messages")
        assert tuple(sizes[0]) == (5, 5)
        assert await rows(dsn, "SELECT 1 FROM mailslot_leases") == []

    asyncio.run(scenario())


def test_a_body_of_another_length_than_announced_inserts_nothing(dsn: str) -> None:
    async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async def attempt(length: int, *parts: bytes) -> None:
        connection = await asyncpg.connect(dsn)
        try:
            account = await connection.fetchval(
                "INSERT INTO mailslot_accounts (name) VALUES ($1) RETURNING account_id", "bob"
            )
            with pytest.raises(BodyChanged):
                async with connection.transaction():
                    await connection.execute(
                        "INSERT INTO mailslot_messages (account_id, seq, uidl, wire_size,"
                        " stored_size, header_size) VALUES ($1, 1, 'u', 4, 4, 4)",
                        account,
                    )
                    await copy_body(connection, account, 1, length, chunks(*parts))
            assert await connection.fetchval("SELECT count(*) FROM mailslot_bodies") == 0
            assert await connection.fetchval("SELECT count(*) FROM mailslot_messages") == 0
            await connection.execute("DELETE FROM mailslot_accounts")  # still usable
        finally:
            await connection.close()

    async def scenario() -> None:
        await attempt(4, b"ab", b"cd", b"e")  # longer
        await attempt(DB_CHUNK, b"abc")  # shorter

    asyncio.run(scenario())


def test_the_stream_checks_the_length_it_announces() -> None:
    async def nothing() -> AsyncIterator[bytes]:
        yield b""

    with pytest.raises(ValueError, match="cannot be stored"):
        asyncio.run(copy_body(None, 1, 1, 2**31, nothing()))
