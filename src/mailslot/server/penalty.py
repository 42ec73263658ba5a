"""The failed-login penalty: one view per client address, whatever the number of connections.

Password guessing is slowed per client *address*, not per connection or per worker: an
attacker who opens 200 connections, or whose connections land on different workers, gets no
more password checks per minute than one who opens one.

**An address with no failure on record** (never seen, or forgotten: see below) has its
password checks made *one at a time*, without a gap: a check is granted at once unless
another check from the address is in flight, and then as soon as that one has ended.  So
logins that arrive together with right passwords (a mail client starting with six accounts,
a family behind one NAT polling at once) each wait only for the checks before them, never
for the penalty, and none is refused; and parallel guessers get one check before the first
failure is known, as one connection would.  A check in flight holds a *lease*
(:attr:`PenaltyPolicy.lease`: ``failure_delay_max``, at least 10 s) that ends with its
result; should its process die first, the lease runs out and the next check goes.

**An address with a failure on record** gets the schedule: every check it is then allowed
is a *strike* (counted when the check is granted, before its result is known, so checks in
flight count too), the first failure being the first strike.  After the ``free``-th strike
(``[auth] failure_free_attempts``) each further check waits ``base * 2**n`` seconds
(``failure_delay``, doubling up to ``failure_delay_max``) after the previous one; a failure
pushes the next permitted check to at least that long after the failure itself.  So one
connection that fails over and over is answered after 2, 4, 8, 15, 15... seconds, as with a
delay served in the session.

**Reservation.**  With a failure on record, :meth:`PenaltyState.reserve` takes the address's
next permitted time atomically and moves it on by the gap, so N connections waiting at once
get N *successive* slots, not one each at the same instant.  A connection whose slot would be
more than ``failure_delay_max`` seconds away is refused without a password check (RFC 3206
``[AUTH]``), its reply held for ``failure_delay_max`` seconds: refused and checked attempts
look the same to the client, which so cannot tell which of its guesses were tried.  A
connection that waits for a check in flight is never refused for it: :meth:`reserve` returns
once that check has ended (a success: its own check goes at once; a failure: it takes a slot
of the schedule, or is refused, as above).

**Every granted check ends** in :meth:`~PenaltyState.failed`, :meth:`~PenaltyState.succeeded`
or, when it has no verdict (the user database failed, the server stopped), in
:meth:`~PenaltyState.released`, which ends its lease.

**Success** from an address forgets it (and ``forget_after`` seconds without a check do).
Behind a NAT this hands a guessing botnet sharing the address one undelayed check (and
``free`` more after its failure) per successful login of a real user there; not resetting
would instead leave that user locked out behind the guessers, which is worse for a mail
server, whose users log in every few minutes.  Either way a shared address is one client to
the penalty.

**Addresses** (:func:`address_key`): an IPv4 address is one client; an IPv6 address is
grouped by its ``ipv6_prefix`` (``/64`` by default: one site's subnet, which a client can
rotate through freely); an IPv4-mapped IPv6 address is its IPv4 address.

The state lives behind :class:`PenaltyState`, in the manner of the store Protocols: the
session asks it and never holds a dict of its own.  :class:`LocalPenaltyState` keeps it in
memory shared by every worker of the node (:mod:`mailslot.server.sharedtable`), a waiter
polling it every few milliseconds; :class:`mailslot.store.postgresql.cluster.ClusterPenaltyState`
implements the same calls for every node of a database, :class:`PenaltyPolicy`'s arithmetic
done in one statement each.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from mailslot.server.sharedtable import Record, SharedTable

__all__ = [
    "Admission",
    "LocalPenaltyState",
    "PenaltyPolicy",
    "PenaltyState",
    "address_key",
]

_MAX_STRIKES = 1 << 20  # past any cap; keeps 2**n and the 32-bit field bounded
MIN_LEASE = 10.0  # seconds: a password check slower than this is a sick server
# A waiter's pauses between two looks at the shared state: short first (a check of a
# {PLAIN} or SQL password takes a millisecond or so), longer while a slow one runs.
POLL_FIRST = 0.005
POLL_MAX = 0.05


def address_key(address: str, ipv6_prefix: int = 64) -> str:
    """The client a penalty counts for ``address``: ``192.0.2.1`` or ``2001:db8::/64``.

    Anything that is not an IP address (a UNIX socket, ``unknown``) is its own key.
    """
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # a zone id is not the network
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        if ipv6_prefix < 128:
            return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to :meth:`PenaltyState.reserve`.

    ``allowed``: check the password after ``wait`` seconds.  Otherwise refuse the attempt
    without checking, answering after ``wait`` seconds.
    """

    allowed: bool
    wait: float


class PenaltyState(Protocol):
    """Failures per client key, seen alike by every worker (and, in time, every node)."""

    async def reserve(self, key: str) -> Admission:
        """Take ``key``'s next permitted password check, or refuse; see the module docstring.

        Returns once no other check from ``key`` without a failure on record is in flight.
        """
        ...

    async def failed(self, key: str) -> float:
        """A check granted to ``key`` failed: seconds to hold the failure reply."""
        ...

    async def succeeded(self, key: str) -> None:
        """A login from ``key`` worked: forget its failures."""
        ...

    async def released(self, key: str) -> None:
        """A check granted to ``key`` ended without a verdict: let the next one go."""
        ...


@dataclass(frozen=True, slots=True)
class PenaltyPolicy:
    """The arithmetic of the module docstring, on one key's :class:`Record`; no I/O, no clock.

    A record with ``strikes == 0`` is an address with no failure on record and a check in
    flight until ``next`` (its lease); with ``strikes >= 1`` ``next`` is the address's next
    permitted check.  ``cap`` (``failure_delay_max``) is also how far ahead a slot may be
    reserved; a slot further away refuses the attempt.
    """

    base: float = 2.0
    cap: float = 15.0
    free: int = 0
    forget_after: float = 900.0

    @property
    def lease(self) -> float:
        """Seconds a check from an address without failures holds off the next one, unless
        its result comes first; 0 without a penalty (``base`` 0)."""
        return 0.0 if self.base <= 0 else max(self.cap, MIN_LEASE)

    def gap(self, strikes: int) -> float:
        """Seconds between the ``strikes``-th check and the next one."""
        if self.base <= 0 or strikes <= self.free:
            return 0.0
        return float(min(self.cap, self.base * 2 ** min(strikes - self.free - 1, 30)))

    def current(self, record: Record | None, now: float) -> Record | None:
        """``record``, or ``None`` once it is forgotten."""
        if record is None or now - record.touched > self.forget_after:
            return None
        return record

    def reserve(self, record: Record | None, now: float) -> tuple[Record | None, Admission | None]:
        """The new record and the answer; ``None`` for "a check is in flight, ask again"."""
        record = self.current(record, now)
        if record is None or record.strikes == 0:
            if record is not None and record.next > now:
                return record, None
            lease = self.lease
            if lease <= 0:
                return None, Admission(True, 0.0)
            return Record(0, now + lease, now), Admission(True, 0.0)
        at = max(now, record.next)
        if at - now > self.cap:
            return record, Admission(allowed=False, wait=self.cap)
        strikes = min(record.strikes + 1, _MAX_STRIKES)
        return Record(strikes, at + self.gap(strikes), now), Admission(True, at - now)

    def failed(self, record: Record | None, now: float) -> tuple[Record, float]:
        record = self.current(record, now)
        if record is None or record.strikes == 0:
            # The first failure on record is the first strike; absent, too, when a success on
            # another connection forgot the address while this check ran.
            strikes, next_ = 1, now
        else:
            strikes, next_ = record.strikes, record.next
        next_ = max(next_, now + self.gap(strikes))
        return Record(strikes, next_, now), min(next_ - now, self.cap)

    def released(self, record: Record | None, now: float) -> Record | None:
        """A check without a verdict: its lease ends; a strike it took stays."""
        record = self.current(record, now)
        if record is None or record.strikes == 0:
            return None
        return record


class LocalPenaltyState:
    """:class:`PenaltyState` for one node: a :class:`SharedTable` shared by its workers.

    Build it in the parent before the workers are forked (:func:`mailslot.server.runner.run`);
    every worker, replacements and new generations included, then shares its counts.
    ``clock`` must be one clock for all processes: ``time.monotonic`` (``CLOCK_MONOTONIC``)
    is system-wide on Linux.  A waiter looks at the table again after ``sleep(pause)``,
    ``pause`` from :data:`POLL_FIRST` growing to :data:`POLL_MAX`: a check in flight on
    another worker ends without a word to this one.
    """

    def __init__(
        self,
        policy: PenaltyPolicy,
        *,
        slots: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.policy = policy
        self.table = SharedTable(slots)
        self._clock = clock
        self._sleep = sleep

    async def reserve(self, key: str) -> Admission:
        pause = POLL_FIRST
        while True:
            admission = self.try_reserve(key)
            if admission is not None:
                return admission
            await self._sleep(pause)
            pause = min(pause * 1.5, POLL_MAX)

    def try_reserve(self, key: str) -> Admission | None:
        """One look: the answer, or ``None`` while another check from ``key`` is in flight."""
        now = self._clock()
        admission: Admission | None = None

        def change(record: Record | None) -> Record | None:
            nonlocal admission
            record, admission = self.policy.reserve(record, now)
            return record

        self.table.update(key, change)
        return admission

    async def failed(self, key: str) -> float:
        now = self._clock()
        hold = 0.0

        def change(record: Record | None) -> Record | None:
            nonlocal hold
            new, hold = self.policy.failed(record, now)
            return new

        self.table.update(key, change)
        return hold

    async def succeeded(self, key: str) -> None:
        self.table.update(key, lambda record: None)

    async def released(self, key: str) -> None:
        now = self._clock()
        self.table.update(key, lambda record: self.policy.released(record, now))

    def strikes(self, key: str) -> int:
        """How many strikes ``key`` has had since it was last forgotten (for tests)."""
        record = self.policy.current(self.table.get(key), self._clock())
        return 0 if record is None else record.strikes

    def in_flight(self, key: str) -> bool:
        """Whether a check from ``key``, without failures on record, holds a lease (tests)."""
        now = self._clock()
        record = self.policy.current(self.table.get(key), now)
        return record is not None and record.strikes == 0 and record.next > now
