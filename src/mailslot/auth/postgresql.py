"""Users in PostgreSQL (``[auth] backend = "postgresql"``), beside the PostgreSQL store.

The table ``mailslot_users`` (schema version 2, docs/postgresql.md) holds what a passwd-file
line holds: the name, the stored ``{SCHEME}data`` (the schemes of :mod:`mailslot.auth.schemes`,
so a passwd-file's lines move over as they are) and the home.  Every login costs one query and
one verification, the same for an unknown user, an invalid name, an unusable hash and a wrong
password (RFC 3206 section 5's single ``[AUTH]``; :mod:`mailslot.auth.verification`): an
invalid name is looked up as the empty name, which matches no row.  A database that cannot be
reached is :class:`~mailslot.auth.base.TemporaryAuthFailure` (``[SYS/TEMP]``).

The administration functions (``mailslot user add|passwd|delete|list``) mirror
:mod:`mailslot.auth.admin`'s for a passwd-file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from mailslot.auth import schemes, usernames
from mailslot.auth.admin import NoSuchUser, UserExists
from mailslot.auth.base import AuthenticationFailed, Authenticator, TemporaryAuthFailure, User
from mailslot.auth.pool import VerifyPool
from mailslot.auth.verification import (
    Verifier,
    answer_failure,
    choose_dummy,
    failure_floor,
    measure_costs,
    verify_or_dummy,
)
from mailslot.store.postgresql.pool import DATABASE_ERRORS, LazyPool, describe

__all__ = ["COLUMNS", "PostgresAuthenticator", "PostgresUsers"]

log = logging.getLogger(__name__)

# What a login reads of a user, in this order (also read by PostgresGate's statement).
COLUMNS = "name, password, home"
_USER = f"SELECT {COLUMNS} FROM mailslot_users WHERE name = $1"  # noqa: S608 - constant
# The dummy's scheme is the one most users have (choose_dummy); a sample says which.
_SAMPLE = "SELECT password FROM mailslot_users ORDER BY changed DESC LIMIT 100"


class PostgresAuthenticator:
    """An :class:`~mailslot.auth.base.Authenticator` over ``mailslot_users``."""

    def __init__(
        self,
        pool: LazyPool,
        *,
        allow_md5: bool = False,
        verifier: Verifier | None = None,
        verify_pool: VerifyPool | None = None,
        failure_floor: float = 0.0,
    ) -> None:
        """``verify_pool``: where slow hashes are checked, fairly between clients;
        ``failure_floor``: the least time a failure takes (more if a scheme costs more)."""
        self._pool = pool
        self._allow_md5 = allow_md5
        self._verify: Verifier = verifier or functools.partial(schemes.verify, allow_md5=allow_md5)
        self._verify_pool = verify_pool
        self._configured_floor = failure_floor
        self._floor = failure_floor
        self._dummy: str | None = None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        try:
            async with self._pool.acquire() as connection:
                yield connection
        except DATABASE_ERRORS as exc:
            log.warning("user database unavailable: %s", describe(exc))
            raise TemporaryAuthFailure(describe(exc)) from exc

    @property
    def pool(self) -> LazyPool:
        """The connections it uses (shared with the store's when they have one database)."""
        return self._pool

    @staticmethod
    def name_for(username: str) -> str:
        """The name looked up for ``username``: an invalid name as the empty name, which
        matches no row, so that it costs what an unknown user costs."""
        return username if usernames.is_valid(username) else ""

    def found(self, row: Any) -> Authenticator:
        """An :class:`Authenticator` for the user whose row (:data:`COLUMNS`, or ``None``
        for no such user) was read already, in another statement (the failed-login
        penalty's: :class:`mailslot.store.postgresql.gate.PostgresGate`).  Its checks cost
        what :meth:`authenticate`'s do, less the lookup."""
        return _Found(self, row)

    async def _row(self, username: str) -> Any:
        async with self._connection() as connection:
            row = await connection.fetchrow(_USER, self.name_for(username))
            await self._calibrate_on(connection)
        return row

    async def _calibrate_on(self, connection: Any) -> None:
        if self._dummy is None:
            sample = [r[0] for r in await connection.fetch(_SAMPLE)]
            self._dummy, self._floor = await asyncio.to_thread(self._calibrate, sample)

    def _calibrate(self, sample: list[str]) -> tuple[str, float]:
        """The dummy hash (of the costliest scheme in ``sample``) and the failure floor: what
        a wrong password costs against the costliest, so that every failure takes as long
        (the schemes of users outside the sample are not measured)."""
        dummy = choose_dummy(sample, allow_md5=self._allow_md5)
        costs = measure_costs([*sample, dummy], allow_md5=self._allow_md5)
        dummy = choose_dummy(sample, allow_md5=self._allow_md5, costs=costs)
        return dummy, failure_floor(costs, self._configured_floor)

    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        started = time.monotonic()
        return await self._check(started, await self._row(username), password, client)

    async def verify_found(self, row: Any, password: str, client: str | None) -> User:
        """:meth:`authenticate` with ``row`` read already (:meth:`found`)."""
        started = time.monotonic()
        if self._dummy is None:  # once per process, as in authenticate()
            async with self._connection() as connection:
                await self._calibrate_on(connection)
        return await self._check(started, row, password, client)

    async def _check(self, started: float, row: Any, password: str, client: str | None) -> User:
        """Verify ``password`` against ``row`` (or the dummy hash); a failure is answered no
        sooner than the floor after ``started``."""
        stored = None
        if row is not None and schemes.identify(row[1], allow_md5=self._allow_md5) is not None:
            stored = row[1]
        assert self._dummy is not None
        matched = await verify_or_dummy(
            self._verify, password, stored, self._dummy, pool=self._verify_pool, client=client
        )
        if not matched or row is None:
            await answer_failure(started, self._floor)
            raise AuthenticationFailed
        return User(name=row[0], home=row[2])

    async def lookup(self, username: str) -> User | None:
        if not usernames.is_valid(username):
            return None
        async with self._connection() as connection:
            row = await connection.fetchrow(_USER, username)
        return None if row is None else User(name=row[0], home=row[2])

    async def aclose(self) -> None:
        await self._pool.aclose()


class _Found:
    """:meth:`PostgresAuthenticator.found`: the row in hand, the check as usual."""

    __slots__ = ("_row", "_users")

    def __init__(self, users: PostgresAuthenticator, row: Any) -> None:
        self._users = users
        self._row = row

    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        return await self._users.verify_found(self._row, password, client)

    async def lookup(self, username: str) -> User | None:
        return await self._users.lookup(username)


class PostgresUsers:
    """``mailslot user`` against ``mailslot_users``; names are validated by the caller."""

    def __init__(self, pool: LazyPool) -> None:
        self._pool = pool

    def __str__(self) -> str:
        # Never the DSN: it may hold a password.
        return "the PostgreSQL user table"

    async def add_user(
        self, name: str, password: str, *, scheme: str = "ARGON2ID", home: str | None = None
    ) -> None:
        stored = schemes.hash_password(password, scheme)
        async with self._pool.acquire() as connection:
            status = await connection.execute(
                "INSERT INTO mailslot_users (name, password, home) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO NOTHING",
                name,
                stored,
                home or None,
            )
        if status.endswith(" 0"):
            raise UserExists(name)

    async def set_password(self, name: str, password: str, scheme: str = "ARGON2ID") -> None:
        stored = schemes.hash_password(password, scheme)
        async with self._pool.acquire() as connection:
            status = await connection.execute(
                "UPDATE mailslot_users SET password = $2, changed = now() WHERE name = $1",
                name,
                stored,
            )
        if status.endswith(" 0"):
            raise NoSuchUser(name)

    async def delete_user(self, name: str) -> None:
        async with self._pool.acquire() as connection:
            status = await connection.execute("DELETE FROM mailslot_users WHERE name = $1", name)
        if status.endswith(" 0"):
            raise NoSuchUser(name)

    async def list_users(self) -> list[str]:
        async with self._pool.acquire() as connection:
            rows = await connection.fetch("SELECT name FROM mailslot_users ORDER BY name")
        return [row[0] for row in rows]
