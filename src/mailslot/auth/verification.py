"""Password verification shared by the backends: same cost for unknown and known users.

RFC 3206 section 5 gives one ``[AUTH]`` reply for every login failure, and the contract in
:mod:`mailslot.auth.base` asks that the time taken says no more than the reply does.  So an
unknown user, an invalid name or an entry without a usable hash is verified against a *dummy*:
a real hash of the scheme most entries use (a wrong password against it costs what a wrong
password costs a real user), or, for an empty table, an argon2id hash made once per process.

Slow schemes run in a worker thread (``asyncio.to_thread``) so a login never blocks the loop.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections import Counter
from collections.abc import Callable, Iterable

from mailslot.auth import schemes

__all__ = ["Verifier", "choose_dummy", "fallback_dummy", "verify_or_dummy"]

Verifier = Callable[[str, str], bool]
"""``(password, stored) -> bool``; :func:`mailslot.auth.schemes.verify` with its options bound."""


@functools.cache
def fallback_dummy() -> str:
    """An argon2id hash of a random secret, made once per process (it costs ~0.1 s)."""
    return schemes.hash_password(secrets.token_urlsafe(24), "ARGON2ID")


def choose_dummy(stored: Iterable[str], *, allow_md5: bool = False) -> str:
    """The first hash of the most common verifiable scheme in ``stored``, else the fallback."""
    first: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for value in stored:
        scheme = schemes.identify(value, allow_md5=allow_md5)
        if scheme is not None:
            counts[scheme] += 1
            first.setdefault(scheme, value)
    if not counts:
        return fallback_dummy()
    scheme, _ = counts.most_common(1)[0]
    return first[scheme]


async def verify_or_dummy(
    verifier: Verifier, password: str, stored: str | None, dummy: str
) -> bool:
    """Verify ``password`` against ``stored``, or against ``dummy`` (then always False)."""
    target = stored if stored is not None else dummy
    if schemes.is_slow(target):
        matched = await asyncio.to_thread(verifier, password, target)
    else:
        matched = verifier(password, target)
    return matched and stored is not None
