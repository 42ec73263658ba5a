"""In-memory user table: the verified fake of :class:`mailslot.auth.base.Authenticator`.

It passes the same contract suite as the passwd-file backend and follows the same rules:
names are validated with :mod:`mailslot.auth.usernames`, every failure is one
:class:`AuthenticationFailed`, and an unknown user is verified against a dummy hash.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Mapping

from mailslot.auth import schemes, usernames, verification
from mailslot.auth.base import AuthenticationFailed, User
from mailslot.auth.pool import VerifyPool
from mailslot.auth.verification import (
    Clock,
    Sleep,
    Verifier,
    answer_failure,
    choose_dummy,
    measure_costs,
    verify_or_dummy,
)

__all__ = ["MemoryAuthenticator"]

_SCHEME_PREFIX = re.compile(r"\{[A-Za-z0-9.-]+\}")


class MemoryAuthenticator:
    """Users from a mapping of name to password.

    A value that starts with a ``{SCHEME}`` prefix is a stored hash (one whose scheme is
    unknown or refused never matches, as in a passwd-file); anything else is the plaintext
    password itself.  Names that
    :func:`mailslot.auth.usernames.validate` refuses raise ValueError here, as a passwd-file
    would skip them.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        homes: Mapping[str, str] | None = None,
        allow_md5: bool = False,
        verifier: Verifier | None = None,
        pool: VerifyPool | None = None,
        failure_floor: float = 0.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._verify: Verifier = verifier or functools.partial(schemes.verify, allow_md5=allow_md5)
        self._pool = pool
        self._clock = clock
        self._sleep = sleep
        self._stored: dict[str, str] = {}
        self._usable: set[str] = set()
        for name, value in users.items():
            usernames.validate(name)
            stored = value if _SCHEME_PREFIX.match(value) else "{PLAIN}" + value
            self._stored[name] = stored
            if schemes.identify(stored, allow_md5=allow_md5) is not None:
                self._usable.add(name)
        self._homes = dict(homes or {})
        hashes = [self._stored[name] for name in self._stored if name in self._usable]
        dummy = choose_dummy(hashes, allow_md5=allow_md5)
        costs = measure_costs([*hashes, dummy], allow_md5=allow_md5)
        self._dummy = choose_dummy(hashes, allow_md5=allow_md5, costs=costs)
        self._floor = verification.failure_floor(costs, failure_floor)

    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        started = self._clock()
        usable = usernames.is_valid(username) and username in self._usable
        stored = self._stored[username] if usable else None
        matched = await verify_or_dummy(
            self._verify, password, stored, self._dummy, pool=self._pool, client=client
        )
        if not matched:
            await answer_failure(started, self._floor, self._clock, self._sleep)
            raise AuthenticationFailed
        return User(name=username, home=self._homes.get(username))

    async def lookup(self, username: str) -> User | None:
        if not usernames.is_valid(username) or username not in self._stored:
            return None
        return User(name=username, home=self._homes.get(username))
