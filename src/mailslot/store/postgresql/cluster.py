"""The failed-login penalty and ``[limits]`` across the nodes of one PostgreSQL database.

With ``[store] backend = "postgresql"`` every node shares two tables (migration 0003):

**The penalty** (:class:`ClusterPenaltyState`, a :class:`~mailslot.server.penalty.PenaltyState`):
a row per client key in ``mailslot_penalty``; :class:`~mailslot.server.penalty.PenaltyPolicy`'s
arithmetic is done by one ``INSERT ... ON CONFLICT DO UPDATE`` with the database's clock, the
row locked for the statement, so attempts on all nodes take successive slots as they do on one
node, and a check from an address with no failure on record holds its lease for every node.
One statement per call, and calls come only with login attempts (``reserve`` then ``failed``
or ``succeeded``: two per attempt; ``released`` instead for a check without a verdict), never
per command; a successful login's two ride on other statements (:mod:`.gate`: the reservation
carries the password lookup, the reset is part of the store's login statement).  A login that
waits for another check in flight from its address repeats ``reserve``'s statement every 10 to
50 ms until that check has ended.  Should the database fail,
the node's own penalty (:class:`~mailslot.server.penalty.LocalPenaltyState`) answers, so a
client is still slowed by the node it is on.

**The counts** (:class:`ClusterCounts`): a per-connection write would put a round trip on
every accept and every close, in the accept loop, and let a slow database slow the accepting
of connections; so the node counts exactly in its shared memory
(:mod:`mailslot.server.sharedlimits`) and each worker, every ``refresh`` seconds, publishes
what it holds (one row per worker process, keys and counts as arrays, ``expires`` renewed)
and reads the sum of every *other* node's live rows, in one statement.  A limit then holds
for the cluster as ``node's exact count + other nodes' published counts``.  The view of the
other nodes is at most ``2 * refresh`` seconds old (their publishing, then our reading), so
a client opening connections on several nodes at once can exceed its limit by what it opens
in that window; a node that dies (SIGKILL, power loss) stops counting once its rows expire,
``3 * refresh`` seconds after its last publishing; a node that restarts clears its rows at
once (:func:`clear_node`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from mailslot.server.penalty import (
    MIN_LEASE,
    POLL_MAX,
    Admission,
    LocalPenaltyState,
    PenaltyPolicy,
)
from mailslot.store.postgresql.pool import DATABASE_ERRORS, LazyPool, describe

if TYPE_CHECKING:
    from mailslot.server.sharedlimits import SharedLimits

__all__ = ["ClusterCounts", "ClusterPenaltyState", "clear_node"]

logger = logging.getLogger("mailslot")

# $1 key, $2 base, $3 cap, $4 free, $5 forget_after (seconds).  "forgotten": a row untouched
# for forget_after is as good as absent (PenaltyPolicy.current).  A row with strikes <= 0 is
# an address with no failure on record, next_at the lease of its check in flight; strikes
# -1 marks a waiter's look at a live lease (RESERVE's answer "ask again"; 0 otherwise).
_FORGOTTEN = "p.touched < now() - make_interval(secs => $5)"
_CLEAN = f"({_FORGOTTEN} OR p.strikes <= 0)"
_IN_FLIGHT = f"(NOT {_FORGOTTEN} AND p.strikes <= 0 AND p.next_at > now())"
_STRIKES = "least(p.strikes + 1, 1048576)"
# PenaltyPolicy.lease: failure_delay_max, at least MIN_LEASE; none without a penalty.  ($2
# cast: "$2 <= 0" alone makes $2 an integer for the whole statement, 0.5 s a 0.)
_LEASE = (
    "now() + make_interval(secs => CASE WHEN $2::float8 <= 0 THEN 0"
    f" ELSE greatest($3::float8, {MIN_LEASE!r}::float8) END)"
)

# PenaltyPolicy.reserve.  No failure on record: a lease (strikes 0), or, while another check
# holds one, the row unchanged but strikes -1 (ask again).  A failure on record: the next
# slot, unless it is more than cap seconds away (then no row is returned and nothing
# changes).  Returns the new strikes and seconds to the new next_at
# (ClusterPenaltyState.admission).
RESERVE = f"""
INSERT INTO mailslot_penalty AS p (key, strikes, next_at, touched)
VALUES ($1, 0, {_LEASE}, now())
ON CONFLICT (key) DO UPDATE SET
    strikes = CASE WHEN {_IN_FLIGHT} THEN -1 WHEN {_CLEAN} THEN 0 ELSE {_STRIKES} END,
    next_at = CASE WHEN {_IN_FLIGHT} THEN p.next_at WHEN {_CLEAN} THEN {_LEASE}
        ELSE greatest(now(), p.next_at)
            + make_interval(secs => mailslot_penalty_gap({_STRIKES}, $2, $3, $4)) END,
    touched = CASE WHEN {_IN_FLIGHT} THEN p.touched ELSE now() END
WHERE {_CLEAN} OR p.next_at <= now() + make_interval(secs => $3)
RETURNING strikes, extract(epoch FROM next_at - now())::float8 AS until_next
"""  # noqa: S608 - built from the constants above, no input

_FAILED_STRIKES = f"CASE WHEN {_CLEAN} THEN 1 ELSE p.strikes END"
# PenaltyPolicy.failed: the first failure on record is the first strike; the next check no
# sooner than a gap after this failure.
FAILED = f"""
INSERT INTO mailslot_penalty AS p (key, strikes, next_at, touched)
VALUES ($1, 1, now() + make_interval(secs => mailslot_penalty_gap(1, $2, $3, $4)), now())
ON CONFLICT (key) DO UPDATE SET
    strikes = {_FAILED_STRIKES},
    next_at = greatest(
        CASE WHEN {_CLEAN} THEN now() ELSE p.next_at END,
        now() + make_interval(secs => mailslot_penalty_gap({_FAILED_STRIKES}, $2, $3, $4))),
    touched = now()
RETURNING extract(epoch FROM next_at - now())::float8
"""  # noqa: S608 - built from the constants above, no input

SUCCEEDED = "DELETE FROM mailslot_penalty WHERE key = $1"
# PenaltyPolicy.released: the lease of a check without a verdict ends; a strike stays.
RELEASED = "DELETE FROM mailslot_penalty WHERE key = $1 AND strikes <= 0"

# $1 node, $2 process, $3 keys, $4 counts, $5 lifetime (seconds).  The CTE runs whether or
# not the query reads it; the query sees the table as before it, and skips this node anyway.
PUBLISH = """
WITH mine AS (
    INSERT INTO mailslot_limit_counts (node, process, keys, counts, expires)
    VALUES ($1, $2, $3::text[], $4::integer[], now() + make_interval(secs => $5))
    ON CONFLICT (node, process) DO UPDATE
        SET keys = EXCLUDED.keys, counts = EXCLUDED.counts, expires = EXCLUDED.expires
    RETURNING 1
)
SELECT u.key, sum(u.count)::bigint
FROM mailslot_limit_counts AS t, unnest(t.keys, t.counts) AS u(key, count)
WHERE t.node <> $1 AND t.expires > now()
GROUP BY u.key
"""

WITHDRAW = "DELETE FROM mailslot_limit_counts WHERE node = $1 AND process = $2"
CLEAR_NODE = "DELETE FROM mailslot_limit_counts WHERE node = $1"
# Now and then: rows of processes long gone, penalties long forgotten.
SWEEP_COUNTS = "DELETE FROM mailslot_limit_counts WHERE expires < now() - interval '1 minute'"
SWEEP_PENALTY = "DELETE FROM mailslot_penalty WHERE touched < now() - make_interval(secs => $1)"

_SWEEP_EVERY = 60.0  # seconds
_POLL_FIRST = 0.01  # seconds: a waiter's first pause (a round trip each look)
_COMPLAIN_EVERY = 60.0  # seconds between two log lines about a database that fails


async def clear_node(connection: Any, node: str) -> int:
    """At a node's start: its counts of an earlier life; returns how many rows there were."""
    status = await connection.execute(CLEAR_NODE, node)
    return int(status.split()[-1])


class _Complaints:
    """One warning per minute about a failing database, not one per login."""

    def __init__(self) -> None:
        self._last = -_COMPLAIN_EVERY

    def __call__(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last >= _COMPLAIN_EVERY:
            self._last = now
            logger.warning("%s: database: %s", what, describe(exc))


class ClusterPenaltyState:
    """:class:`~mailslot.server.penalty.PenaltyState` of every node of one database."""

    def __init__(self, pool: LazyPool, policy: PenaltyPolicy, local: LocalPenaltyState) -> None:
        self.pool = pool
        self.policy = policy
        self.local = local  # answers while the database does not
        self.complain = _Complaints()
        p = policy
        # RESERVE's and FAILED's $2 to $5.
        self.args = (float(p.base), float(p.cap), int(p.free), float(p.forget_after))

    async def reserve(self, key: str) -> Admission:
        # A waiter asks again every few tens of milliseconds: a round trip each, made only
        # while another check from the address, with no failure on record, is in flight.
        pause = _POLL_FIRST
        while True:
            try:
                admission = await self._reserve_once(key)
            except DATABASE_ERRORS as exc:
                self.complain("failure penalty: using this node's own", exc)
                return await self.local.reserve(key)
            if admission is not None:
                return admission
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, POLL_MAX)

    async def try_reserve(self, key: str) -> Admission | None:
        """One RESERVE: the answer, or ``None`` while another check from ``key`` is in
        flight (:meth:`LocalPenaltyState.try_reserve`)."""
        try:
            return await self._reserve_once(key)
        except DATABASE_ERRORS as exc:
            self.complain("failure penalty: using this node's own", exc)
            return self.local.try_reserve(key)

    async def _reserve_once(self, key: str) -> Admission | None:
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow(RESERVE, key, *self.args)
        return self.admission(None if row is None else (row[0], row[1]))

    def admission(self, reserved: tuple[int, float] | None) -> Admission | None:
        """RESERVE's row (strikes, until_next) as :meth:`PenaltyPolicy.reserve`'s answer: no
        row, refused; strikes -1, ``None``: ask again (a check is in flight); 0, check now
        (the lease taken); else the slot's wait."""
        if reserved is None:
            return Admission(allowed=False, wait=self.policy.cap)
        strikes, until_next = int(reserved[0]), float(reserved[1])
        if strikes < 0:
            return None
        if strikes == 0:
            return Admission(True, 0.0)
        return Admission(True, max(0.0, until_next - self.policy.gap(strikes)))

    async def failed(self, key: str) -> float:
        try:
            async with self.pool.acquire() as connection:
                seconds = await connection.fetchval(FAILED, key, *self.args)
        except DATABASE_ERRORS as exc:
            self.complain("failure penalty: using this node's own", exc)
            return await self.local.failed(key)
        return max(0.0, min(float(seconds), self.policy.cap))

    async def succeeded(self, key: str) -> None:
        try:
            async with self.pool.acquire() as connection:
                await connection.execute(SUCCEEDED, key)
        except DATABASE_ERRORS as exc:
            self.complain("failure penalty: cannot forget a client", exc)
        await self.local.succeeded(key)

    async def released(self, key: str) -> None:
        try:
            async with self.pool.acquire() as connection:
                await connection.execute(RELEASED, key)
        except DATABASE_ERRORS as exc:
            self.complain("failure penalty: cannot end a check's lease", exc)
        await self.local.released(key)


class ClusterCounts:
    """One worker's side of the cluster's counts: publishes what ``limits`` holds and keeps
    the other nodes' sums for :meth:`elsewhere`; see the module docstring."""

    def __init__(
        self,
        pool: LazyPool,
        node: str,
        *,
        refresh: float = 2.0,
        forget_after: float = 900.0,
    ) -> None:
        self.pool = pool
        self.node = node
        self.refresh = refresh
        self.lifetime = 3 * refresh
        self.forget_after = forget_after
        self.view: dict[str, int] = {}
        self.limits: SharedLimits | None = None
        self._task: asyncio.Task[None] | None = None
        self._complain = _Complaints()
        self._swept = time.monotonic()
        self.rounds = 0  # publishing round trips made (for tests and benchmarks)

    def elsewhere(self, key: str) -> int:
        """The other nodes' count of ``key``, as last read."""
        return self.view.get(key, 0)

    def start(self, limits: SharedLimits) -> None:
        self.limits = limits
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def publish(self) -> None:
        """One round: this process's counts out, the other nodes' in."""
        assert self.limits is not None
        held = {k: n for k, n in self.limits.held.items() if n > 0}
        async with self.pool.acquire() as connection:
            rows = await connection.fetch(
                PUBLISH,
                self.node,
                os.getpid(),
                list(held),
                list(held.values()),
                self.lifetime,
            )
            self.rounds += 1
            if time.monotonic() - self._swept >= _SWEEP_EVERY:
                self._swept = time.monotonic()
                await connection.execute(SWEEP_COUNTS)
                await connection.execute(SWEEP_PENALTY, self.forget_after)
        self.view = {key: int(count) for key, count in rows}

    async def _run(self) -> None:
        while True:
            try:
                await self.publish()
            except DATABASE_ERRORS as exc:
                # The view ages; the other nodes' rows of us expire.  Each node's own limits
                # hold regardless.
                self._complain("connection limits: cannot publish this node's counts", exc)
            await asyncio.sleep(self.refresh)

    async def stop(self) -> None:
        """Stop publishing and withdraw this process's row (it would expire anyway)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(*DATABASE_ERRORS):
            async with asyncio.timeout(self.pool.connect_timeout):
                async with self.pool.acquire() as connection:
                    await connection.execute(WITHDRAW, self.node, os.getpid())
