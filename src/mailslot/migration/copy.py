"""One account at a time from the Maildir store into the PostgreSQL store, resumably.

The old maildrop is opened through the Maildir :class:`~mailslot.store.base.Store` itself,
exactly as a POP3 login opens it (its lock, its ``dovecot-uidlist`` and ``uidl_format``, its
sizes), so the order, the UIDLs (RFC 1939 section 7) and the sizes (section 11's LIST) stored
in PostgreSQL are by construction the ones clients were shown: no client downloads anything
again.

While an account is filled it is *held*: a lease row of the node ``mailslot-migrate`` that
never expires (:data:`~mailslot.store.postgresql.queries.MIGRATION_NODE`), so a login on the
PostgreSQL store gets ``[IN-USE]`` and a delivery is deferred (LMTP ``451``, ``mailslot
deliver`` exit 75) until the account is complete and released.  A migration killed half-way
leaves the hold in place; the next run takes it over and goes on.

Idempotent per message: a message is copied only if its UIDL is not in the account yet (the
schema's ``UNIQUE (account_id, uidl)``), in transactions of a batch of messages, each first
checking that the hold is still ours (a second ``mailslot migrate`` on the same account
takes the hold and the first one stops).  Messages copied by an earlier run and removed from
the Maildir since are removed from the account too; messages delivered into PostgreSQL (their
UIDL is the account's own ``prefix.seq``) are never touched.

No message is held whole unless it is small: one larger than ``Batches.whole`` (1 MiB) is
read twice in chunks, once to measure it (its length and header length), then into a COPY
of its own transaction (:mod:`mailslot.store.postgresql.bodies`), so a 100 MB attachment
costs a chunk of memory, not 100 MB.  Its listing row and body commit together or not at
all, as a batch's do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailslot.migration.progress import Progress
from mailslot.store.base import MaildropLocked, MessageGone, MessageInfo, Store, StoreError
from mailslot.store.postgresql import PostgresStore, bodies, queries
from mailslot.store.postgresql.store import DB_CHUNK, header_length

# Take the hold unless a session's lease is alive; a hold of an earlier run is taken over.
HOLD = """
INSERT INTO mailslot_leases (account_id, token, node, expires)
VALUES ($1, nextval('mailslot_lease_tokens'), 'mailslot-migrate', 'infinity')
ON CONFLICT (account_id) DO UPDATE
    SET token = EXCLUDED.token, node = EXCLUDED.node, acquired = now(), expires = EXCLUDED.expires
    WHERE mailslot_leases.expires < now() OR mailslot_leases.node = 'mailslot-migrate'
RETURNING token
"""
RELEASE = "DELETE FROM mailslot_leases WHERE account_id = $1 AND token = $2"
# Waits for a delivery that started before the hold to commit, so that it is seen below.
LOCK_ACCOUNT = "SELECT uid_prefix FROM mailslot_accounts WHERE account_id = $1 FOR UPDATE"
PRESENT = "SELECT seq, uidl FROM mailslot_messages WHERE account_id = $1"
RESERVE = """
UPDATE mailslot_accounts SET next_seq = next_seq + $2 WHERE account_id = $1
RETURNING next_seq - $2
"""
REMOVE = "DELETE FROM mailslot_messages WHERE account_id = $1 AND seq = ANY($2::bigint[])"
USER = """
INSERT INTO mailslot_users (name, password, home) VALUES ($1, $2, $3)
ON CONFLICT (name) DO NOTHING
"""
USER_ROW = "SELECT password, home FROM mailslot_users WHERE name = $1"
# A streamed message's listing row, before its body (the body's foreign key needs it).
LISTING_ROW = """
INSERT INTO mailslot_messages (account_id, seq, uidl, wire_size, stored_size, header_size)
VALUES ($1, $2, $3, $4, $5, $6)
"""

assert queries.MIGRATION_NODE in HOLD


class Skipped(Exception):
    """This account was not (completely) migrated; the message says why.  Retry later."""


class HoldLost(Skipped):
    """Another ``mailslot migrate`` took this account's hold."""


@dataclass
class Outcome:
    """What a run did to one account."""

    copied: int = 0
    present: int = 0
    removed: int = 0


@dataclass(frozen=True, slots=True)
class Batches:
    """A transaction commits at most ``messages`` messages or about ``octets`` octets; a
    message whose size is over ``whole`` octets is streamed in a transaction of its own."""

    messages: int = 500
    octets: int = 16 * 1024 * 1024
    whole: int = 1024 * 1024


async def read_whole(maildrop: Any, message: MessageInfo) -> bytes:
    """The stored bytes of ``message``, as the Maildir store serves them (a small one)."""
    return b"".join([chunk async for chunk in maildrop.read(message)])


class Migrator:
    """Copies accounts from ``maildirs`` (the Maildir store) into ``database``."""

    def __init__(
        self,
        maildirs: Store,
        database: PostgresStore,
        progress: Progress,
        batches: Batches = Batches(),
    ) -> None:
        self._maildirs = maildirs
        self._database = database
        self._progress = progress
        self._batches = batches

    async def account(self, connection: Any, name: str) -> int:
        account = await connection.fetchval(queries.ACCOUNT, name)
        if account is None:
            account = await connection.fetchval(queries.CREATE_ACCOUNT, name)
        return int(account)

    async def hold(self, name: str) -> tuple[int, int]:
        """Hold ``name``'s account (creating it); return (account, token).  Raises
        :class:`Skipped` while a POP3 session on the PostgreSQL store holds its lease."""
        async with self._database.connection() as connection:
            account = await self.account(connection, name)
            token = await connection.fetchval(HOLD, account)
        if token is None:
            raise Skipped("a POP3 session holds it in the database")
        return account, int(token)

    async def release(self, account: int, token: int) -> None:
        async with self._database.connection() as connection:
            await connection.execute(RELEASE, account, token)

    async def copy_user_row(self, name: str, password: str, home: str | None) -> str | None:
        """Copy one passwd-file line into ``mailslot_users``; a line already there is left
        alone.  Returns a warning if what is there differs."""
        async with self._database.connection() as connection:
            await connection.execute(USER, name, password, home)
            row = await connection.fetchrow(USER_ROW, name)
        if row is not None and (row[0], row[1]) != (password, home):
            return "already in the database with another password or home: left as it is"
        return None

    async def migrate(self, name: str, home: str | None) -> Outcome:
        """Copy ``name``'s maildrop; raises :class:`Skipped` (nothing of it is lost: a
        re-run goes on where this one stopped)."""
        try:
            maildrop = await self._maildirs.open(name, home)
        except MaildropLocked:
            raise Skipped("a POP3 session holds its Maildir") from None
        except StoreError as exc:
            raise Skipped(f"cannot open its Maildir: {exc}") from None
        try:
            listing = list(maildrop.messages)
            uids = [m.uid for m in listing]
            if len(set(uids)) != len(uids):
                raise Skipped("its Maildir lists one UIDL twice; fix the Maildir first")
            account, token = await self.hold(name)
            outcome = await self._fill(maildrop, listing, account, token)
            await self.release(account, token)
            return outcome
        finally:
            await maildrop.close()

    async def _fill(
        self, maildrop: Any, listing: Sequence[MessageInfo], account: int, token: int
    ) -> Outcome:
        outcome = Outcome()
        wanted = {m.uid for m in listing}
        async with self._database.connection() as connection, connection.transaction():
            prefix = await connection.fetchval(LOCK_ACCOUNT, account)
            rows = await connection.fetch(PRESENT, account)
            present = {uidl for _, uidl in rows}
            stale = [
                seq
                for seq, uidl in rows
                if uidl not in wanted and uidl != f"{prefix}.{seq}"  # never a native message
            ]
            if stale:
                await connection.execute(REMOVE, account, stale)
        outcome.removed = len(stale)
        done = [m for m in listing if m.uid in present]
        outcome.present = len(done)
        self._progress.advance(len(done), sum(m.size for m in done))
        batch: list[tuple[MessageInfo, bytes]] = []
        octets = 0
        for message in listing:
            if message.uid in present:
                continue
            if message.size > self._batches.whole:
                # Committed after the batch before it: seqs keep the Maildir's order.
                if batch:
                    outcome.copied += await self._commit(account, token, batch)
                    batch, octets = [], 0
                outcome.copied += await self._stream(maildrop, account, token, message)
                continue
            try:
                data = await read_whole(maildrop, message)
            except MessageGone:
                self._progress.note(f"a message vanished from the Maildir: {message.uid}")
                continue
            batch.append((message, data))
            octets += len(data)
            if len(batch) >= self._batches.messages or octets >= self._batches.octets:
                outcome.copied += await self._commit(account, token, batch)
                batch, octets = [], 0
        if batch:
            outcome.copied += await self._commit(account, token, batch)
        return outcome

    async def _commit(
        self, account: int, token: int, batch: list[tuple[MessageInfo, bytes]]
    ) -> int:
        async with self._database.connection() as connection, connection.transaction():
            ours = await connection.fetchval(queries.FENCE, account, token)
            if ours is None:
                raise HoldLost("another mailslot migrate took over this account")
            first = int(await connection.fetchval(RESERVE, account, len(batch)))
            await connection.copy_records_to_table(
                "mailslot_messages",
                columns=("account_id", "seq", "uidl", "wire_size", "stored_size", "header_size"),
                records=[
                    (account, first + i, m.uid, m.size, len(data), header_length(data))
                    for i, (m, data) in enumerate(batch)
                ],
            )
            await connection.copy_records_to_table(
                "mailslot_bodies",
                columns=("account_id", "seq", "body"),
                records=[(account, first + i, data) for i, (_, data) in enumerate(batch)],
            )
        self._progress.advance(len(batch), sum(m.size for m, _ in batch))
        return len(batch)

    async def _stream(self, maildrop: Any, account: int, token: int, message: MessageInfo) -> int:
        """Copy one large message in chunks, in its own transaction; 0 if it vanished."""
        scan = bodies.BodyScan()
        try:
            async for chunk in maildrop.read(message, DB_CHUNK):
                scan.feed(chunk)
            async with self._database.connection() as connection, connection.transaction():
                ours = await connection.fetchval(queries.FENCE, account, token)
                if ours is None:
                    raise HoldLost("another mailslot migrate took over this account")
                seq = int(await connection.fetchval(RESERVE, account, 1))
                await connection.execute(
                    LISTING_ROW, account, seq, message.uid, message.size, scan.length, scan.header
                )
                await bodies.copy_body(
                    connection, account, seq, scan.length, maildrop.read(message, DB_CHUNK)
                )
        except MessageGone:
            self._progress.note(f"a message vanished from the Maildir: {message.uid}")
            return 0
        except bodies.BodyChanged as exc:
            raise Skipped(f"message {message.uid} changed while it was copied: {exc}") from None
        self._progress.advance(1, message.size)
        return 1


async def listing_totals(maildirs: Store, name: str, home: str | None) -> tuple[int, int]:
    """How many messages ``name``'s Maildir lists, and their octets (0, 0 if busy)."""
    with contextlib.suppress(StoreError):
        maildrop = await maildirs.open(name, home)
        try:
            return len(maildrop.messages), sum(m.size for m in maildrop.messages)
        finally:
            await maildrop.close()
    return 0, 0
