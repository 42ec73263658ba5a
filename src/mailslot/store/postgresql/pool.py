"""A lazily made asyncpg pool, shared by the PostgreSQL store and the PostgreSQL users.

The pool is made at the first use, in the process and event loop that use it: a pool made
before a fork, or in another event loop, is never used (its sockets and futures belong to
them).  So a server starts, and forks its workers, without touching the database.  The
schema is checked once per pool, at its first connection.

A connection given back cleanly (no error, no open transaction) is kept by this pool and
handed to the next statement, or to the first one waiting for a connection, instead of going
through asyncpg's release and acquire: those cost about as much CPU as the statement itself
(a task for the shielded release, timeouts, the holder queue; ``benchmarks/pool_acquire.py``),
and a POP3 session is about fifteen statements.  asyncpg's pool still makes, replaces and
closes the connections: a connection used with an error or a cancellation, or closed by the
server, goes back through asyncpg's release, which rolls back, resets or replaces it, and one
kept idle for a minute goes back to it too (its inactivity timer then closes it).
"""

from __future__ import annotations

import asyncio
import collections
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
        # Connections acquired from asyncpg's pool and not released to it: in use or idle.
        self._held = 0
        # Acquirers waiting while all ``size`` are out: given a connection, or None for a
        # place (one went back to asyncpg: acquire another from it).
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
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
            self._idle, self._held, self._sweeper = [], 0, None
            self._waiters = collections.deque()
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
        """(asyncpg's pool, a connection of it): a kept one if any; a new one from asyncpg
        while this pool holds fewer than ``size``; else the next one given back."""
        if asyncio.current_task() is None:
            # The session runs work that may not wait outside any task, until it does wait
            # (server.session): asyncpg's timeouts need a task, so wait once to get one.
            await asyncio.sleep(0)
        pool = await self._get()
        idle = self._idle
        deadline: float | None = None
        while True:
            while idle:
                connection, _ = idle.pop()  # the most recently used: the others age out
                if usable(connection):
                    return pool, connection
                self._held -= 1
                await pool.release(connection)  # asyncpg replaces it at its next acquire
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.connect_timeout
            if self._held < self.size:
                break
            # Every connection is out: wait for the next one given back (or for a place).
            waiter: asyncio.Future[Any] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    connection = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._pass_on(waiter.result())  # given one just as we gave up
                else:
                    waiter.cancel()
                raise
            if connection is not None:
                return pool, connection
        self._held += 1
        try:
            connection = await pool.acquire(timeout=max(0.0, deadline - loop.time()))
        except BaseException:
            self._held -= 1
            self._pass_on(None)
            raise
        try:
            if not self._schema_checked:
                await schema.check(connection)
                self._schema_checked = True
        except BaseException:
            await self._give(pool, connection, False)
            raise
        return pool, connection

    def _pass_on(self, connection: Any) -> None:
        """A clean connection (or, if None, a free place) to the first waiter; a connection
        nobody waits for is kept idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if connection is None:
            return
        loop = asyncio.get_running_loop()
        self._idle.append((connection, loop.time()))
        if self._sweeper is None:
            self._sweeper = loop.call_later(IDLE_RETURN_SECONDS, self._sweep)

    async def _give(self, pool: Any, connection: Any, clean: bool) -> None:
        """Keep ``connection`` (for a waiter, or idle) if it was used cleanly; otherwise
        asyncpg's release (rollback, reset or replacement), and its place to a waiter."""
        if (
            clean
            and pool is self._pool
            and usable(connection)
            and not connection.is_in_transaction()
        ):
            self._pass_on(connection)
            return
        if pool is self._pool:
            self._held -= 1
        try:
            await pool.release(connection)
        finally:
            if pool is self._pool:
                self._pass_on(None)

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
        self._held -= len(old)
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
        self._held = 0
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the pool is closed"))
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
