"""A lazily made asyncpg pool, shared by the PostgreSQL store and the PostgreSQL users.

The pool is made at the first use, in the process and event loop that use it: a pool made
before a fork, or in another event loop, is never used (its sockets and futures belong to
them).  So a server starts, and forks its workers, without touching the database.  The
schema is checked once per pool, at its first connection.

A connection given back cleanly (no error, no open transaction) is kept by this pool for the
next statement instead of going through asyncpg's release and acquire: those cost about as
much CPU as the statement itself (a task for the shielded release, a timeout, the holder
queue; ``benchmarks/pool_acquire.py``), and a POP3 session is about twenty statements, one
per RETR.  Anything else (an error, a cancellation, a waiter in asyncpg's queue, a closed
connection) goes through asyncpg's own release, which rolls back, resets or replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from types import TracebackType
from typing import Any

import asyncpg

from mailslot.store.postgresql import schema

# What a lost, refused or unusable database looks like through asyncpg.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
    schema.SchemaMismatch,
)

# A connection kept idle by :class:`LazyPool` longer than this goes back to asyncpg's pool,
# whose own inactivity timer (``max_inactive_connection_lifetime``) then closes it.
IDLE_RETURN_SECONDS = 60.0

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


# os.getpid() is a system call; the pool's owner check runs before every statement.
os.register_at_fork(after_in_child=_forked)


class LazyPool:
    """At most ``size`` connections to ``dsn`` per process."""

    def __init__(
        self,
        dsn: str,
        *,
        size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        statement_cache_size: int = 100,
    ) -> None:
        self._dsn = dsn
        self.size = size
        self.connect_timeout = connect_timeout
        # A database that stops answering (a partition without a reset) must not hold a
        # session for ever: its statement fails, the client gets [SYS/TEMP].
        self.command_timeout = command_timeout
        self._statement_cache_size = statement_cache_size
        self._pool: Any = None
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._lock: asyncio.Lock | None = None
        self._schema_checked = False
        # Connections acquired from asyncpg's pool and given back clean: (connection, when).
        self._idle: list[tuple[Any, float]] = []
        self._waiting = 0  # acquirers waiting in asyncpg's pool: they get the next release
        self._sweeper: asyncio.TimerHandle | None = None
        self._returning: set[asyncio.Task[None]] = set()

    async def _get(self) -> Any:
        owner = (_pid, asyncio.get_running_loop())
        if self._pool is not None and self._owner == owner:
            return self._pool
        if self._owner != owner:
            # Made in another process (before a fork) or another event loop: unusable here.
            self._pool, self._owner, self._lock = None, owner, asyncio.Lock()
            self._schema_checked = False
            self._idle, self._waiting, self._sweeper = [], 0, None
        assert self._lock is not None
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self.size,
                    timeout=self.connect_timeout,
                    command_timeout=self.command_timeout,
                    statement_cache_size=self._statement_cache_size,
                    reset=_keep_session,
                )
        return self._pool

    def acquire(self) -> _Acquire:
        """``async with pool.acquire() as connection``: a connection of the pool; raises any
        of :data:`DATABASE_ERRORS`."""
        return _Acquire(self)

    async def _take(self) -> tuple[Any, Any]:
        """(asyncpg's pool, a connection of it): a kept one if any, else asyncpg's."""
        if asyncio.current_task() is None:
            # The session runs work that may not wait outside any task, until it does wait
            # (server.session): asyncpg's timeouts need a task, so wait once to get one.
            await asyncio.sleep(0)
        pool = await self._get()
        idle = self._idle
        while idle:
            connection, _ = idle.pop()  # the most recently used: the others age out
            if usable(connection):
                return pool, connection
            await pool.release(connection)  # asyncpg replaces it at its next acquire
        self._waiting += 1
        try:
            connection = await pool.acquire(timeout=self.connect_timeout)
        finally:
            self._waiting -= 1
        try:
            if not self._schema_checked:
                await schema.check(connection)
                self._schema_checked = True
        except BaseException:
            await pool.release(connection)
            raise
        return pool, connection

    async def _give(self, pool: Any, connection: Any, clean: bool) -> None:
        """Keep ``connection`` for the next acquirer if it was used cleanly and nobody waits
        in asyncpg's queue; otherwise asyncpg's release (rollback, reset or replacement)."""
        if (
            clean
            and not self._waiting
            and pool is self._pool
            and usable(connection)
            and not connection.is_in_transaction()
        ):
            loop = asyncio.get_running_loop()
            self._idle.append((connection, loop.time()))
            if self._sweeper is None:
                self._sweeper = loop.call_later(IDLE_RETURN_SECONDS, self._sweep)
            return
        await pool.release(connection)

    def _sweep(self) -> None:
        """Give connections kept idle for :data:`IDLE_RETURN_SECONDS` back to asyncpg."""
        self._sweeper = None
        pool = self._pool
        if pool is None:
            return
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - IDLE_RETURN_SECONDS
        # The list is in release order, so the stale ones are at its start.
        stale = 0
        while stale < len(self._idle) and self._idle[stale][1] <= cutoff:
            stale += 1
        old, self._idle = self._idle[:stale], self._idle[stale:]
        for connection, _ in old:
            task = loop.create_task(pool.release(connection))
            self._returning.add(task)
            task.add_done_callback(self._returning.discard)
        if self._idle:
            self._sweeper = loop.call_later(IDLE_RETURN_SECONDS, self._sweep)

    async def aclose(self) -> None:
        """Close the pool (at shutdown)."""
        pool, self._pool = self._pool, None
        idle, self._idle = self._idle, []
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if pool is None or self._owner is None:
            return
        if self._owner == (os.getpid(), asyncio.get_running_loop()):
            with contextlib.suppress(*DATABASE_ERRORS):
                for connection, _ in idle:  # close() waits for every acquired connection
                    await pool.release(connection)
                await asyncio.wait_for(pool.close(), self.connect_timeout)
        elif self._owner[0] == os.getpid():
            pool.terminate()


def usable(connection: Any) -> bool:
    """Whether a connection acquired from asyncpg's pool is still open and ours: when the
    server closes one, asyncpg takes it back at once (its proxy then refuses every call)."""
    try:
        return not connection.is_closed()
    except asyncpg.InterfaceError:
        return False


class _Acquire:
    """:meth:`LazyPool.acquire`'s context manager: a class, not a generator, since it runs
    around every statement."""

    __slots__ = ("_connection", "_lazy", "_pool")

    def __init__(self, lazy: LazyPool) -> None:
        self._lazy = lazy
        self._pool: Any = None
        self._connection: Any = None

    async def __aenter__(self) -> Any:
        self._pool, self._connection = await self._lazy._take()
        return self._connection

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool, connection = self._pool, self._connection
        self._pool = self._connection = None
        await self._lazy._give(pool, connection, kind is None)


async def _keep_session(connection: Any) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own rollback of an open
    transaction.  asyncpg's default reset is one more round trip per release (``SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``), five per POP3 session,
    undoing session state this store never creates: no advisory locks, LISTEN, SET or cursor
    outliving its transaction (benchmarks: ``roundtrips``, docs/benchmarks.md)."""


def describe(exc: BaseException) -> str:
    """One line for a log: the error's class and the first line of its message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
