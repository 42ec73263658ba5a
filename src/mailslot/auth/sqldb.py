"""The two databases an SQL passdb reads: PostgreSQL (asyncpg) and MySQL/MariaDB (aiomysql).

Each is a pool made at its first use, in the process and event loop that use it (as
:mod:`mailslot.store.postgresql.pool`: a server forks its workers without touching the
database).  A query runs with bound parameters, never with values in its text; its rows come
back as mappings from column name to value.  Whatever goes wrong between here and the
database (refused, lost, timed out, an SQL error in the administrator's query) is raised as
:class:`DatabaseUnavailable` with a one-line description that holds no password.

MySQL/MariaDB goes through aiomysql (aio-libs, over PyMySQL): its parameters are sent
escaped by the driver for the connection's character set (utf8mb4 here) and ``sql_mode``
(``NO_BACKSLASH_ESCAPES`` included), which is how the MySQL text protocol binds them;
PostgreSQL's are sent apart from the query text (extended protocol).

The connection string (``[auth.sql] dsn``) is a URI (``postgresql://user:pw@host/db``,
``mysql://user:pw@host:3306/db`` or ``mysql://user:pw@localhost/db?unix_socket=/run/mysqld/mysqld.sock``)
or Dovecot's own ``connect`` value (``host=... dbname=... user=... password=...``; for
MySQL a ``host`` that starts with ``/`` is a Unix socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import urllib.parse
from collections.abc import Mapping
from typing import Any, Protocol

from mailslot.auth.sqlquery import Driver, Query

__all__ = [
    "Database",
    "DatabaseUnavailable",
    "DsnError",
    "MysqlDatabase",
    "PostgresDatabase",
    "connect_arguments",
    "open_database",
]

Row = Mapping[str, object]


class DatabaseUnavailable(Exception):
    """The query could not be answered; the message is one loggable line.  ``connecting``:
    no connection could be had (else the query itself failed)."""

    def __init__(self, message: str, *, connecting: bool = False) -> None:
        super().__init__(message)
        self.connecting = connecting


class DsnError(ValueError):
    """The connection string cannot be read; the message never quotes a password."""


class Database(Protocol):
    async def fetch(self, query: Query, parameters: tuple[str, ...]) -> list[Row]:
        """The rows ``query`` returns; raises :class:`DatabaseUnavailable`."""
        ...

    async def columns(self, query: Query, parameters: tuple[str, ...]) -> list[str]:
        """The names of the columns ``query`` returns (it is run once, by itself: no retry);
        raises :class:`DatabaseUnavailable`, ``connecting`` said."""
        ...

    async def aclose(self) -> None: ...


# Dovecot's connect keys (libpq's names for PostgreSQL) and the drivers' argument names.
_PG_KEYS = {
    "host": "host",
    "port": "port",
    "dbname": "database",
    "user": "user",
    "password": "password",
    "sslmode": "ssl",
}
_MYSQL_KEYS = {
    "host": "host",
    "port": "port",
    "dbname": "db",
    "user": "user",
    "password": "password",
}


def connect_arguments(driver: Driver, dsn: str) -> dict[str, Any]:
    """The driver's connection arguments for ``dsn``; raises :class:`DsnError`."""
    dsn = dsn.strip()
    if not dsn:
        raise DsnError("is empty")
    if "://" in dsn:
        return _from_uri(driver, dsn)
    try:
        words = shlex.split(dsn)
    except ValueError as exc:
        raise DsnError(f"cannot be read as key=value words: {exc}") from None
    names = _PG_KEYS if driver == "postgresql" else _MYSQL_KEYS
    arguments: dict[str, Any] = {}
    for word in words:
        key, equals, value = word.partition("=")
        if not equals:
            # Not quoted: the word may be a password written with spaces around its "=".
            raise DsnError("has a word without '=': write key=value words (Dovecot's connect)")
        if key not in names:
            raise DsnError(f"unknown key {key!r}; known are {', '.join(names)}")
        arguments[names[key]] = value
    if "port" in arguments:
        try:
            arguments["port"] = int(arguments["port"])
        except ValueError:
            raise DsnError("port must be a number") from None
    if driver == "mysql" and str(arguments.get("host", "")).startswith("/"):
        arguments["unix_socket"] = arguments.pop("host")
    return arguments


def _from_uri(driver: Driver, dsn: str) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(dsn)
    schemes = ("postgresql", "postgres") if driver == "postgresql" else ("mysql", "mariadb")
    if parts.scheme not in schemes:
        raise DsnError(f"a {driver} URI starts with {schemes[0]}://, not {parts.scheme}://")
    if driver == "postgresql":
        return {"dsn": dsn}  # asyncpg reads libpq's URI, query parameters included
    arguments: dict[str, Any] = {}
    try:
        port = parts.port
    except ValueError:
        raise DsnError("port must be a number") from None
    for key, value in (
        ("host", parts.hostname),
        ("port", port),
        ("user", parts.username),
        ("password", parts.password),
        ("db", parts.path.lstrip("/")),
    ):
        if value:
            arguments[key] = urllib.parse.unquote(value) if isinstance(value, str) else value
    for key, value in urllib.parse.parse_qsl(parts.query):
        if key != "unix_socket":
            raise DsnError(f"unknown URI parameter {key!r}; known is unix_socket")
        arguments["unix_socket"] = value
    return arguments


def describe(exc: BaseException) -> str:
    """One line for a log: the error's class and the first line of its message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _LazyPool:
    """A pool made at first use, per process and event loop; ``make`` builds it."""

    driver: Driver  # how the subclass's DSN is read (connect_arguments)

    def __init__(
        self, dsn: str, *, size: int = 5, connect_timeout: float = 5.0, query_timeout: float = 10.0
    ) -> None:
        self._arguments = connect_arguments(self.driver, dsn)
        self.size = size
        self.connect_timeout = connect_timeout
        self.query_timeout = query_timeout
        self._pool: Any = None
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._lock: asyncio.Lock | None = None

    async def _make(self) -> Any:
        raise NotImplementedError

    async def get(self) -> Any:
        if asyncio.current_task() is None:
            # The session runs work that may not wait outside any task until it does wait
            # (server.session); the timeouts need a task, so wait once to get one.
            await asyncio.sleep(0)
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._pool is not None and self._owner == owner:
            return self._pool
        if self._owner != owner:
            # Made before a fork or in another loop: its sockets are not ours to use.
            self._pool, self._owner, self._lock = None, owner, asyncio.Lock()
        assert self._lock is not None
        async with self._lock:
            if self._pool is None:
                self._pool = await self._make()
        return self._pool

    def _forget(self) -> Any:
        pool, self._pool = self._pool, None
        if pool is None or self._owner is None or self._owner[0] != os.getpid():
            return None
        if self._owner[1] is not asyncio.get_running_loop():
            return None
        return pool


class PostgresDatabase(_LazyPool):
    """PostgreSQL through an asyncpg pool."""

    driver: Driver = "postgresql"

    async def _make(self) -> Any:
        import asyncpg

        return await asyncpg.create_pool(
            **self._arguments,
            min_size=0,
            max_size=self.size,
            timeout=self.connect_timeout,
            command_timeout=self.query_timeout,
        )

    async def fetch(self, query: Query, parameters: tuple[str, ...]) -> list[Row]:
        import asyncpg

        errors: tuple[type[BaseException], ...] = (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,
            asyncpg.ClientConfigurationError,
            OSError,
            TimeoutError,
        )
        try:
            pool = await self.get()
            # A connection the server closed (a restart) is not handed out: the pool sees
            # it closed and connects anew.
            async with pool.acquire(timeout=self.connect_timeout) as connection:
                rows = await asyncio.wait_for(
                    connection.fetch(query.text, *parameters), self.query_timeout
                )
            return [dict(row.items()) for row in rows]
        except errors as exc:
            raise DatabaseUnavailable(describe(exc)) from exc

    async def columns(self, query: Query, parameters: tuple[str, ...]) -> list[str]:
        import asyncpg

        connecting = True
        try:
            pool = await self.get()
            async with pool.acquire(timeout=self.connect_timeout) as connection:
                connecting = False
                statement = await connection.prepare(query.text)
                await asyncio.wait_for(statement.fetch(*parameters), self.query_timeout)
                return [attribute.name for attribute in statement.get_attributes()]
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise DatabaseUnavailable(describe(exc), connecting=connecting) from exc

    async def aclose(self) -> None:
        pool = self._forget()
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), self.connect_timeout)


class MysqlDatabase(_LazyPool):
    """MySQL or MariaDB through an aiomysql pool."""

    driver: Driver = "mysql"

    async def _make(self) -> Any:
        import aiomysql

        return await aiomysql.create_pool(
            minsize=0,
            maxsize=self.size,
            connect_timeout=self.connect_timeout,
            charset="utf8mb4",
            autocommit=True,
            # An idle connection the server closed (wait_timeout) is not handed out again.
            pool_recycle=300,
            **self._arguments,
        )

    async def fetch(self, query: Query, parameters: tuple[str, ...]) -> list[Row]:
        import aiomysql
        import pymysql

        errors = (pymysql.err.MySQLError, OSError, TimeoutError, RuntimeError)
        try:
            pool = await self.get()
            # A connection the server closed (a restart) is not handed out: aiomysql's pool
            # drops those whose stream has ended and connects anew.
            connection = await asyncio.wait_for(pool.acquire(), self.connect_timeout)
            try:
                async with connection.cursor(aiomysql.DictCursor) as cursor:
                    await asyncio.wait_for(
                        cursor.execute(query.text, parameters), self.query_timeout
                    )
                    rows: list[Row] = list(await cursor.fetchall())
            except BaseException:
                connection.close()  # its state is unknown now: never handed out again
                raise
            finally:
                pool.release(connection)
            return rows
        except errors as exc:
            raise DatabaseUnavailable(describe(exc)) from exc

    async def columns(self, query: Query, parameters: tuple[str, ...]) -> list[str]:
        import pymysql

        connecting = True
        try:
            pool = await self.get()
            connection = await asyncio.wait_for(pool.acquire(), self.connect_timeout)
            connecting = False
            try:
                async with connection.cursor() as cursor:
                    await asyncio.wait_for(
                        cursor.execute(query.text, parameters), self.query_timeout
                    )
                    await cursor.fetchall()
                    return [str(column[0]) for column in cursor.description or ()]
            finally:
                pool.release(connection)
        except (pymysql.err.MySQLError, OSError, TimeoutError, RuntimeError) as exc:
            raise DatabaseUnavailable(describe(exc), connecting=connecting) from exc

    async def aclose(self) -> None:
        pool = self._forget()
        if pool is not None:
            pool.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.wait_closed(), self.connect_timeout)


def open_database(
    driver: Driver,
    dsn: str,
    *,
    size: int = 5,
    connect_timeout: float = 5.0,
    query_timeout: float = 10.0,
) -> Database:
    """The database for ``driver``; nothing is connected yet.  Raises :class:`DsnError`."""
    kind = PostgresDatabase if driver == "postgresql" else MysqlDatabase
    return kind(dsn, size=size, connect_timeout=connect_timeout, query_timeout=query_timeout)
