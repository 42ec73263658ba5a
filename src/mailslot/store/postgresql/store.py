"""Maildrops in PostgreSQL: many nodes, one mail store (docs/postgresql.md).

The contract is :mod:`mailslot.store.base`'s, as the Maildir backend keeps it: RFC 1939
section 8's exclusive lock is a lease (:mod:`.lease`) that holds across every process and
node; the snapshot (section 5's message numbers) is the account's messages in arrival order,
read from a covering index; UIDLs (section 7) are stored, 1-70 printable octets, never reused
in an account; sizes are the stored CRLF wire sizes (section 11).  RETR and TOP stream the
body from the database in 256 KiB substrings, one query per chunk as the client takes them,
so no large message is ever held whole and no connection is held while a client is slow.
While the client has pipelined more commands (RFC 2449 section 6.6; the session says so,
:class:`~mailslot.store.base.ReadsAhead`), a small message's read also brings the messages
after it, up to 256 KiB in all, in the same query; they are dropped when the session waits
for the client's next command, so a maildrop keeps at most one chunk's worth between two
reads (while a slow client drains the replies already sent, as a large message's chunk in
flight is held).
QUIT's deletion (section 6) is one statement, so one transaction, that deletes only if the
session's lease token is still the lease's, and releases the lease.

Connections come from an asyncpg pool made lazily in the process and event loop that uses it
(a pool must not cross a fork), so a server starts while the database is down; every
database error becomes :class:`~mailslot.store.base.TemporaryFailure` (``[SYS/TEMP]``).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import asyncpg

from mailslot.store.base import (
    MaildropLocked,
    MessageGone,
    MessageInfo,
    Owner,
    StoreError,
    TemporaryFailure,
)
from mailslot.store.postgresql import cluster, fault, queries, schema
from mailslot.store.postgresql.lease import Lease
from mailslot.store.postgresql.pool import DATABASE_ERRORS, LazyPool, describe
from mailslot.store.wiresize import wire_size

logger = logging.getLogger("mailslot.store")

# Bytes per substring() query: 64 TOAST chunks; about 42 ms per MiB on PostgreSQL 15.
DB_CHUNK = 256 * 1024
# Messages per read-ahead query at most (their wire sizes add up to DB_CHUNK at most).
READ_AHEAD_MESSAGES = 16


def header_length(data: bytes) -> int:
    """Octets of ``data`` up to and including the empty line ending the header (RFC 5322
    section 2.1), or all of it if there is none: what TOP sends before the body's lines."""
    if data.startswith(b"\n"):
        return 1
    if data.startswith(b"\r\n"):
        return 2
    ends = [
        found + len(blank) for blank in (b"\n\n", b"\n\r\n") if (found := data.find(blank)) >= 0
    ]
    return min(ends) if ends else len(data)


class PostgresMaildrop:
    """One user's maildrop under a held lease, open for a single POP3 session."""

    def __init__(self, store: PostgresStore, lease: Lease, messages: Sequence[MessageInfo]) -> None:
        self._store = store
        self._lease = lease
        self._messages = tuple(messages)
        self._keys = frozenset(m.key for m in self._messages)
        self._open = True
        self._more = False  # the client has pipelined more commands (read_ahead)
        self._ahead: dict[int, bytes] = {}  # seq -> body, brought by an earlier read

    @property
    def messages(self) -> Sequence[MessageInfo]:
        return self._messages

    @property
    def lease(self) -> Lease:
        return self._lease

    def read_ahead(self, more: bool) -> None:
        self._more = more
        if not more:
            self._ahead.clear()

    async def read(self, message: MessageInfo, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        if not self._open:
            raise TemporaryFailure("maildrop is closed")
        if message.key not in self._keys:
            raise MessageGone("message is not in this maildrop")
        seq = _seq(message.key)
        data = self._ahead.pop(seq, None)
        if data is None and self._more and message.size <= DB_CHUNK:
            data = await self._read_with_next(message, seq)
        if data is not None:
            for start in range(0, len(data), chunk_size):
                yield data[start : start + chunk_size]
            return
        step = chunk_size * max(1, DB_CHUNK // chunk_size)
        offset = 1  # substring() counts from 1
        while True:
            async with self._store.connection() as connection:
                data = await connection.fetchval(
                    queries.READ_CHUNK, self._lease.account, seq, offset, step
                )
            if data is None:
                raise MessageGone("message has been removed")
            for start in range(0, len(data), chunk_size):
                yield data[start : start + chunk_size]
            if len(data) < step:
                return
            offset += step

    async def _read_with_next(self, message: MessageInfo, seq: int) -> bytes | None:
        """``message``'s body and, kept for the next reads, those of the messages after it in
        the snapshot whose sizes add up to :data:`DB_CHUNK` with it: one query.  None when
        no message follows that fits (the caller reads ``message`` alone)."""
        messages = self._messages
        at = bisect.bisect_left(messages, seq, key=lambda m: _seq(m.key))
        seqs, total = [seq], message.size
        for following in messages[at + 1 : at + READ_AHEAD_MESSAGES]:
            total += following.size
            if total > DB_CHUNK:
                break
            seqs.append(_seq(following.key))
        if len(seqs) == 1:
            return None
        async with self._store.connection() as connection:
            rows = await connection.fetch(queries.READ_BODIES, self._lease.account, seqs)
        bodies: dict[int, bytes] = {int(row[0]): bytes(row[1]) for row in rows}
        data = bodies.pop(seq, None)
        if data is None:
            raise MessageGone("message has been removed")
        self._ahead = bodies
        return data

    async def delete(self, messages: Sequence[MessageInfo]) -> None:
        if not self._open:
            raise TemporaryFailure("maildrop is closed")
        seqs = sorted({_seq(m.key) for m in messages if m.key in self._keys})
        if not seqs:
            return
        lease = self._lease
        # The statement releases the lease: no renewal may run after it (nor during it).
        await lease.stop()
        async with self._store.connection() as connection:
            ours, _, _ = await fault.during(
                "quit-before-commit",
                connection.fetchrow(queries.QUIT_DELETE, lease.account, lease.token, seqs),
            )
        if not ours:
            lease.lost = True
            raise TemporaryFailure(
                "the maildrop's lease was lost (another session holds it): nothing deleted"
            )
        lease.released = True

    async def close(self) -> None:
        if self._open:
            self._open = False
            self._ahead.clear()
            await self._lease.release()


class PostgresStore:
    """Maildrops in one PostgreSQL database, shared by every worker and node.

    ``pool_size`` connections at most per process; ``lease_seconds`` is the lifetime of a
    maildrop's lease, renewed every third of it; ``node`` names this node's leases (a node
    starting clears its own earlier ones: :meth:`clear_node_leases`).
    """

    def __init__(
        self,
        dsn: str | LazyPool,
        *,
        pool_size: int = 10,
        lease_seconds: float = 30.0,
        node: str = "localhost",
        connect_timeout: float = 5.0,
        statement_cache_size: int = 100,
    ) -> None:
        if isinstance(dsn, LazyPool):
            self.pool = dsn
        else:
            self.pool = LazyPool(
                dsn,
                size=pool_size,
                connect_timeout=connect_timeout,
                statement_cache_size=statement_cache_size,
            )
        self.lease_seconds = lease_seconds
        self.node = node

    def connection(self) -> _Connection:
        """``async with store.connection() as connection``: a pooled connection; database
        errors raised inside become TemporaryFailure."""
        return _Connection(self.pool)

    async def aclose(self) -> None:
        """Close the pool (at shutdown)."""
        await self.pool.aclose()

    # -- the Store protocol ------------------------------------------------------------------

    async def _account(self, connection: Any, user: str) -> int:
        account = await connection.fetchval(queries.ACCOUNT, user)
        if account is None:
            account = await connection.fetchval(queries.CREATE_ACCOUNT, user)
        return int(account)

    async def open(
        self,
        user: str,
        home: str | None = None,
        *,
        owner: Owner | None = None,
        forgive: str | None = None,
    ) -> PostgresMaildrop:
        """:meth:`Store.open`; ``forgive``: a failed-login penalty key
        (:mod:`mailslot.store.postgresql.cluster`) to forget in the same statement, the
        password having been right (:class:`mailslot.store.postgresql.gate.PostgresGate`)."""
        async with self.connection() as connection:
            row = await connection.fetchrow(
                queries.LOGIN, user, self.node, self.lease_seconds, forgive
            )
            if row is None:  # a user's first login: make the account, then take the lease
                account = int(await connection.fetchval(queries.CREATE_ACCOUNT, user))
                token = await connection.fetchval(
                    queries.ACQUIRE_LEASE, account, self.node, self.lease_seconds
                )
                listing = None
            else:
                account, token, seen, latest, seqs, uidls, sizes = row
                # A QUIT's deletion committed while the lease was awaited: the listing read
                # with the statement's snapshot may hold what it deleted (queries.LOGIN).
                listing = (seqs or [], uidls or [], sizes or []) if seen == latest else None
            if token is None:
                raise MaildropLocked("maildrop is in use")
            lease = Lease(self.connection, account, int(token), self.lease_seconds)
            if listing is None:
                try:
                    rows = await connection.fetch(queries.SNAPSHOT, account)
                except BaseException:
                    await _release_quietly(lease)
                    raise
                listing = ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
        messages = _listing(account, *listing)
        lease.start()
        return PostgresMaildrop(self, lease, messages)

    async def deliver(
        self, user: str, data: bytes, home: str | None = None, *, owner: Owner | None = None
    ) -> str:
        data = bytes(data)
        async with self.connection() as connection, connection.transaction():
            account = await self._account(connection, user)
            seq = await connection.fetchval(
                queries.DELIVER, account, wire_size(data), len(data), header_length(data), data
            )
        if seq is None:
            # mailslot migrate is filling this account: deferred (LMTP 451, exit 75), the
            # MTA retries once the account is complete and in order.
            raise TemporaryFailure("the maildrop is being migrated (mailslot migrate)")
        return _key(account, seq)

    async def usage(self, user: str, home: str | None = None) -> Any:
        """What ``user``'s maildrop holds, for the delivery quota."""
        from mailslot.delivery.quota import Usage

        async with self.connection() as connection:
            account = await connection.fetchval(queries.ACCOUNT, user)
            if account is None:
                return Usage(0, 0)
            messages, octets = await connection.fetchrow(queries.USAGE, account)
        return Usage(int(octets), int(messages))

    async def clear_node_leases(self) -> int:
        """Drop every lease of this node: called when the node starts, when none of its
        sessions can be alive.  Returns how many there were."""
        async with self.connection() as connection:
            status = await connection.execute(queries.CLEAR_NODE_LEASES, self.node)
        return int(status.split()[-1])


class _Connection:
    """:meth:`PostgresStore.connection`'s context manager (a class: it runs around every
    statement, a generator's context manager costs more)."""

    __slots__ = ("_acquire",)

    def __init__(self, pool: LazyPool) -> None:
        self._acquire = pool.acquire()

    async def __aenter__(self) -> Any:
        try:
            return await self._acquire.__aenter__()
        except DATABASE_ERRORS as exc:
            raise TemporaryFailure(f"database: {describe(exc)}") from exc

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._acquire.__aexit__(kind, exc, tb)
        except DATABASE_ERRORS as error:
            raise TemporaryFailure(f"database: {describe(error)}") from error
        if isinstance(exc, DATABASE_ERRORS) and not isinstance(exc, StoreError):
            raise TemporaryFailure(f"database: {describe(exc)}") from exc


def _listing(
    account: int, seqs: list[int], uidls: list[str], sizes: list[int]
) -> list[MessageInfo]:
    """The snapshot in arrival order (RFC 1939 section 5's numbering): as read, unless the
    plan did not keep the query's order (then sorted here)."""
    if any(a > b for a, b in itertools.pairwise(seqs)):
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        seqs = [seqs[i] for i in order]
        uidls = [uidls[i] for i in order]
        sizes = [sizes[i] for i in order]
    # Positional and inline: a 100,000-message listing is built at every login.
    return [
        MessageInfo(f"{account}/{seq}", uidl, size)
        for seq, uidl, size in zip(seqs, uidls, sizes, strict=True)
    ]


def _key(account: int, seq: int) -> str:
    """A message's key: its account and arrival number, unique in the database."""
    return f"{account}/{seq}"


def _seq(key: str) -> int:
    return int(key.partition("/")[2])


async def _release_quietly(lease: Lease) -> None:
    with contextlib.suppress(StoreError):
        await lease.release()


async def start_node(dsn: str, node: str, connect_timeout: float = 5.0) -> int:
    """At a node's start, before any worker serves: check the schema (raises
    :class:`~mailslot.store.postgresql.schema.SchemaMismatch`) and clear the node's leases
    of an earlier life; return how many.  Other errors are asyncpg's or OSError."""
    connection = await asyncpg.connect(dsn, timeout=connect_timeout, statement_cache_size=0)
    try:
        await schema.check(connection)
        status = await connection.execute(queries.CLEAR_NODE_LEASES, node)
        await cluster.clear_node(connection, node)  # its connection counts, too
    finally:
        await connection.close()
    return int(status.split()[-1])
