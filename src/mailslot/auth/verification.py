"""Password verification shared by the backends: a failure takes the same time for everyone.

RFC 3206 section 5 gives one ``[AUTH]`` reply for every login failure, and the contract in
:mod:`mailslot.auth.base` asks that the time taken says no more than the reply does.  Two
things see to it:

- An unknown user, an invalid name or an entry without a usable hash is verified against a
  *dummy*: a real hash of the costliest scheme the user table holds, or, for an empty table,
  an argon2id hash made once per process.  An unknown user so costs the server as much as
  the costliest real one, and queues in the same :class:`~mailslot.auth.pool.VerifyPool`.
- A failure is answered no earlier than a *floor* after the attempt began
  (:func:`answer_failure`): the cost of the slowest scheme in the table, measured when the
  table is loaded (:func:`measure_costs`, with a margin), or ``[auth] failure_time_floor`` if
  larger.  Before, the dummy was of the *most common* scheme, and an argon2id user among
  bcrypt ones answered 189 ms later than an unknown user: found.  Now an unknown user, a
  ``{PLAIN}`` one and an argon2id one fail after the same time, as long as the checks take
  no longer than when they were measured (a machine loaded past that stretches all of them,
  the slow schemes most).

Slow schemes run in the pool when a backend has one, else in a worker thread
(``asyncio.to_thread``), so a login never blocks the loop.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping

from mailslot.auth import schemes
from mailslot.auth.pool import VerifyPool, VerifyRefused

__all__ = [
    "Clock",
    "Sleep",
    "Verifier",
    "answer_failure",
    "choose_dummy",
    "failure_floor",
    "fallback_dummy",
    "measure_costs",
    "verify_or_dummy",
]

Verifier = Callable[[str, str], bool]
"""``(password, stored) -> bool``; :func:`mailslot.auth.schemes.verify` with its options bound."""

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# How much longer than the slowest measured check a failure waits: the measurement is a few
# samples on a machine whose load changes.
_MARGIN = 1.25
_SLACK = 0.005  # seconds: a thread hand-off and a wake-up
_SAMPLES = 3
# Enough of one scheme's time: a slow hash (argon2id ~0.15 s) is checked once, so that a
# worker's start is not held up by seconds of measuring.
_ENOUGH = 0.1


@functools.cache
def fallback_dummy() -> str:
    """An argon2id hash of a random secret, made once per process (it costs ~0.1 s)."""
    return schemes.hash_password(secrets.token_urlsafe(24), "ARGON2ID")


def measure_costs(
    stored: Iterable[str],
    *,
    allow_md5: bool = False,
    legacy: Collection[str] = (),
    known: Mapping[str, float] | None = None,
    clock: Clock = time.perf_counter,
) -> dict[str, float]:
    """Seconds a wrong password costs against the first hash of each scheme in ``stored``.

    Schemes already in ``known`` keep that cost (a re-read file is not measured again).
    Each new scheme is checked with :func:`mailslot.auth.schemes.verify` (the real cost,
    whatever verifier a backend was given) against a random password, up to ``_SAMPLES``
    times while the checks took less than ``_ENOUGH`` seconds; the median is its cost.
    It blocks: call it at start-up or in a worker thread.
    """
    costs = dict(known or {})
    for value in stored:
        scheme = schemes.identify(value, allow_md5=allow_md5, legacy=legacy)
        if scheme is None or scheme in costs:
            continue
        samples: list[float] = []
        while len(samples) < _SAMPLES and sum(samples) < _ENOUGH:
            wrong = secrets.token_urlsafe(12)
            started = clock()
            schemes.verify(wrong, value, allow_md5=allow_md5, legacy=legacy)
            samples.append(clock() - started)
        costs[scheme] = statistics.median(samples)
    return costs


def failure_floor(costs: Mapping[str, float], configured: float = 0.0) -> float:
    """When a failure may be answered, in seconds after the attempt began."""
    measured = max(costs.values(), default=0.0) * _MARGIN + _SLACK
    return max(configured, measured)


def choose_dummy(
    stored: Iterable[str],
    *,
    allow_md5: bool = False,
    legacy: Collection[str] = (),
    costs: Mapping[str, float] | None = None,
) -> str:
    """The first hash of the costliest scheme in ``stored`` (by ``costs``, else the most
    common scheme), or the fallback for a table with no verifiable hash."""
    first: dict[str, str] = {}
    counts: dict[str, int] = {}
    for value in stored:
        scheme = schemes.identify(value, allow_md5=allow_md5, legacy=legacy)
        if scheme is not None:
            counts[scheme] = counts.get(scheme, 0) + 1
            first.setdefault(scheme, value)
    if not counts:
        return fallback_dummy()
    weights = costs or {}
    scheme = max(counts, key=lambda s: (weights.get(s, 0.0), counts[s]))
    return first[scheme]


async def verify_or_dummy(
    verifier: Verifier,
    password: str,
    stored: str | None,
    dummy: str,
    *,
    pool: VerifyPool | None = None,
    client: str | None = None,
) -> bool:
    """Verify ``password`` against ``stored``, or against ``dummy`` (then always False).

    A slow hash is checked in ``pool`` on behalf of ``client``; a check the pool refuses
    (the client has too many waiting) is a failure.
    """
    target = stored if stored is not None else dummy
    if schemes.is_slow(target):
        check = functools.partial(verifier, password, target)
        if pool is None:
            matched = await asyncio.to_thread(check)
        else:
            try:
                matched = await pool.run(client, check)
            except VerifyRefused:
                return False
    else:
        matched = verifier(password, target)
    return matched and stored is not None


async def answer_failure(
    started: float, floor: float, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
) -> None:
    """Return no earlier than ``floor`` seconds after ``started`` (a ``clock()`` reading)."""
    remaining = started + floor - clock()
    if remaining > 0:
        await sleep(remaining)
