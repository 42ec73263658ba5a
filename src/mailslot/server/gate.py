"""A login's two steps that talk to shared state, behind one small Protocol.

A login (RFC 1939 section 7's USER/PASS or APOP, RFC 5034's AUTH) asks, in order: the
failed-login penalty for the client's turn (:mod:`mailslot.server.penalty`), the user
database for the password, the penalty again to forget the client once the password was
right, and the store for the maildrop, which it locks (section 8) and lists.  Each is its
own call of its own Protocol, and each a database round trip when all three live in
PostgreSQL.  :class:`LoginGate` groups them in two steps, so that a backend that keeps them in
one database may do each step in one statement
(:class:`mailslot.store.postgresql.gate.PostgresGate`):

- :meth:`LoginGate.admit`: the penalty's reservation, and who checks the password (the user
  database, or the user's row read in the reservation's statement);
- :meth:`LoginGate.open`: forget the client's failures and open the maildrop.

The order is the session's and never changes: the maildrop is locked only in :meth:`open`,
after a right password, so a wrong password never blocks anybody's maildrop.
:class:`SeparateGate` is the plain composition, for every other pairing of backends.
"""

from __future__ import annotations

from typing import Protocol

from mailslot.auth.base import Authenticator, User
from mailslot.server.penalty import Admission, PenaltyState
from mailslot.store.base import Maildrop, Owner, Store

__all__ = ["LoginGate", "SeparateGate", "owner_of"]


class LoginGate(Protocol):
    """What a session asks before and after checking a password."""

    async def admit(self, key: str, username: str) -> tuple[Admission, Authenticator]:
        """Reserve client ``key``'s next password check (:meth:`PenaltyState.reserve`) and
        say who checks ``username``'s password; ``username`` is untrusted input."""
        ...

    async def open(self, key: str, user: User) -> Maildrop:
        """``user``'s password was right: forget ``key``'s failures (whatever happens to the
        maildrop) and open ``user``'s maildrop (:meth:`Store.open`, its errors)."""
        ...


def owner_of(user: User) -> Owner | None:
    """The (uid, gid) the user database gives for files made for ``user``, if any."""
    return None if user.extra is None else user.extra.owner


class SeparateGate:
    """:class:`LoginGate` as its parts: one call of each."""

    __slots__ = ("_penalty", "_store", "_users")

    def __init__(self, penalty: PenaltyState, users: Authenticator, store: Store) -> None:
        self._penalty = penalty
        self._users = users
        self._store = store

    async def admit(self, key: str, username: str) -> tuple[Admission, Authenticator]:
        return await self._penalty.reserve(key), self._users

    async def open(self, key: str, user: User) -> Maildrop:
        await self._penalty.succeeded(key)
        return await self._store.open(user.name, user.home, owner=owner_of(user))
