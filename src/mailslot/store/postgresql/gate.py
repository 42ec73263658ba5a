"""A login's steps in two statements when the penalty, users and store share one database.

:class:`PostgresGate` is the :class:`~mailslot.server.gate.LoginGate` of the PostgreSQL store
with the cluster-wide failed-login penalty (:mod:`.cluster`) and, if the users are the table
``mailslot_users`` on the same connections (``[auth] backend = "postgresql"``), the user
database:

- :meth:`PostgresGate.admit` is :data:`RESERVE_AND_USER`: the penalty's ``RESERVE`` and the
  user's row in one statement.  The row is read whatever the reservation's answer, and
  whether or not the user exists (an invalid name is looked up as the empty name), so an
  unknown user, a wrong password and a refused attempt cost the database the same; the
  password is then checked as :meth:`PostgresAuthenticator.authenticate` checks it.  A
  client the penalty makes wait (or refuses), or whose address has another check in flight,
  has its row read again after the wait, as any other user database would.  With another
  user database: ``RESERVE`` alone.
- :meth:`PostgresGate.open` is the store's ``LOGIN`` statement with the penalty's reset in it
  (:meth:`PostgresStore.open`'s ``forgive``), reached only after a right password, so a wrong
  password never takes (or blocks) the maildrop's lease.

Should the database fail, the penalty answers from the node's own state, as
:class:`.cluster.ClusterPenaltyState` does, and the password check asks the user database
itself (which then fails as it would have).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailslot.auth.base import Authenticator, User
from mailslot.auth.postgresql import COLUMNS, PostgresAuthenticator
from mailslot.server.gate import owner_of
from mailslot.server.penalty import Admission
from mailslot.store.base import Maildrop, Owner, Store
from mailslot.store.postgresql.cluster import RESERVE, ClusterPenaltyState
from mailslot.store.postgresql.pool import DATABASE_ERRORS
from mailslot.store.postgresql.store import PostgresMaildrop, PostgresStore

__all__ = ["RESERVE_AND_USER", "PostgresGate"]

# $1 to $5 RESERVE's, $6 the name looked up.  One row always: RESERVE's (NULLs if refused)
# beside the user's (NULLs if there is none).
RESERVE_AND_USER = f"""
WITH reserve AS ({RESERVE.strip()})
SELECT reserve.strikes, reserve.until_next, users.*
FROM (SELECT) AS one
LEFT JOIN reserve ON true
LEFT JOIN (SELECT {COLUMNS} FROM mailslot_users WHERE name = $6) AS users ON true
"""  # noqa: S608 - built from constants, no input


def _same(store: Store) -> Store:
    return store


def _same_users(users: Authenticator) -> Authenticator:
    return users


class _Forgiving:
    """A :class:`~mailslot.store.base.Store` whose ``open`` forgets a penalty key (for the
    metrics' view of the store, which wraps a Store)."""

    __slots__ = ("_key", "_store")

    def __init__(self, store: PostgresStore, key: str) -> None:
        self._store = store
        self._key = key

    async def open(
        self, user: str, home: str | None = None, *, owner: Owner | None = None
    ) -> PostgresMaildrop:
        return await self._store.open(user, home, owner=owner, forgive=self._key)

    async def deliver(
        self, user: str, data: bytes, home: str | None = None, *, owner: Owner | None = None
    ) -> str:
        return await self._store.deliver(user, data, home, owner=owner)


class PostgresGate:
    """:class:`~mailslot.server.gate.LoginGate` over one database; see the module docstring.

    ``users``: the user database as the session asks it (maybe a metrics view);
    ``table``: the same as a :class:`PostgresAuthenticator` on the penalty's pool, or
    ``None``; ``normalise``: what ``users`` does to a name before it reaches ``table``
    (``[auth] username_format``, :mod:`mailslot.auth.usernameformat`).
    ``observe_store``/``observe_users``: the metrics' views (identity by default).
    """

    __slots__ = (
        "_normalise",
        "_observe_store",
        "_observe_users",
        "_penalty",
        "_store",
        "_table",
        "_users",
    )

    def __init__(
        self,
        penalty: ClusterPenaltyState,
        users: Authenticator,
        store: PostgresStore,
        *,
        table: PostgresAuthenticator | None = None,
        normalise: Callable[[str], str] = str,
        observe_store: Callable[[Store], Store] = _same,
        observe_users: Callable[[Authenticator], Authenticator] = _same_users,
    ) -> None:
        if table is not None and table.pool is not penalty.pool:
            raise ValueError("the user table must be read on the penalty's connections")
        self._penalty = penalty
        self._users = users
        self._store = store
        self._table = table
        self._normalise = normalise
        self._observe_store = observe_store
        self._observe_users = observe_users

    async def admit(self, key: str, username: str) -> tuple[Admission, Authenticator]:
        penalty, table = self._penalty, self._table
        if table is None:
            return await penalty.reserve(key), self._users
        try:
            async with penalty.pool.acquire() as connection:
                row: Any = await connection.fetchrow(
                    RESERVE_AND_USER,
                    key,
                    *penalty.args,
                    table.name_for(self._normalise(username)),
                )
        except DATABASE_ERRORS as exc:
            penalty.complain("failure penalty: using this node's own", exc)
            return await penalty.local.reserve(key), self._users
        admission = penalty.admission(None if row[0] is None else (row[0], row[1]))
        if admission is None:
            # Another check from this address, with no failure on record, is in flight:
            # wait for it to end (ClusterPenaltyState.reserve asks again), then read the
            # row again, as after any wait.
            return await penalty.reserve(key), self._users
        if admission.wait > 0:
            # The check comes after a penalty's wait: the row may be stale by then (a
            # password changed, a user deleted), so it is read again after the wait.
            return admission, self._users
        user = None if row[2] is None else row[2:]
        return admission, self._observe_users(table.found(user))

    async def open(self, key: str, user: User) -> Maildrop:
        # This node's own penalty forgets the client too (it answers while the database
        # does not), as ClusterPenaltyState.succeeded does.
        await self._penalty.local.succeeded(key)
        store = self._observe_store(_Forgiving(self._store, key))
        return await store.open(user.name, user.home, owner=owner_of(user))
