"""A lazily made asyncpg pool, shared by the PostgreSQL store and the PostgreSQL users.

The pool is made at the first use, in the process and event loop that use it: a pool made
before a fork, or in another event loop, is never used (its sockets and futures belong to
them).  So a server starts, and forks its workers, without touching the database.  The
schema is checked once per pool, at its first connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
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

    async def _get(self) -> Any:
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._pool is not None and self._owner == owner:
            return self._pool
        if self._owner != owner:
            # Made in another process (before a fork) or another event loop: unusable here.
            self._pool, self._owner, self._lock = None, owner, asyncio.Lock()
            self._schema_checked = False
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

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        """A connection of the pool; raises any of :data:`DATABASE_ERRORS`."""
        if asyncio.current_task() is None:
            # The session runs work that may not wait outside any task, until it does wait
            # (server.session): asyncpg's timeouts need a task, so wait once to get one.
            await asyncio.sleep(0)
        pool = await self._get()
        async with pool.acquire(timeout=self.connect_timeout) as connection:
            if not self._schema_checked:
                await schema.check(connection)
                self._schema_checked = True
            yield connection

    async def aclose(self) -> None:
        """Close the pool (at shutdown)."""
        pool, self._pool = self._pool, None
        if pool is None or self._owner is None:
            return
        if self._owner == (os.getpid(), asyncio.get_running_loop()):
            with contextlib.suppress(*DATABASE_ERRORS):
                await asyncio.wait_for(pool.close(), self.connect_timeout)
        elif self._owner[0] == os.getpid():
            pool.terminate()


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
