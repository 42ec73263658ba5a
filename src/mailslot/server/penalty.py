"""The failed-login penalty: one view per client address, whatever the number of connections.

Password guessing is slowed per client *address*, not per connection or per worker: an
attacker who opens 200 connections, or whose connections land on different workers, gets no
more password checks per minute than one who opens one.

**The schedule.**  Every password check an address is allowed is a *strike* (counted when
the check is granted, before its result is known, so checks in flight count too).  After the
``free``-th strike (``[auth] failure_free_attempts``) each further check waits
``base * 2**n`` seconds (``failure_delay``, doubling up to ``failure_delay_max``) after the
previous one; a failure pushes the next permitted check to at least that long after the
failure itself.  So one connection that fails over and over is answered after 2, 4, 8, 15,
15... seconds, as with a delay served in the session.

**Reservation.**  :meth:`PenaltyState.reserve` takes the address's next permitted time
atomically and moves it on by the gap, so N connections waiting at once get N *successive*
slots, not one each at the same instant.  A connection whose slot would be more than
``failure_delay_max`` seconds away is refused without a password check (RFC 3206 ``[AUTH]``),
its reply held for ``failure_delay_max`` seconds: refused and checked attempts look the same
to the client, which so cannot tell which of its guesses were tried.

**Success** from an address forgets it (and ``forget_after`` seconds without a check do).
Behind a NAT this hands a guessing botnet sharing the address at most ``free`` undelayed
checks per successful login of a real user there; not resetting would instead leave that
user locked out behind the guessers, which is worse for a mail server, whose users log in
every few minutes.  Either way a shared address is one client to the penalty.

**Addresses** (:func:`address_key`): an IPv4 address is one client; an IPv6 address is
grouped by its ``ipv6_prefix`` (``/64`` by default: one site's subnet, which a client can
rotate through freely); an IPv4-mapped IPv6 address is its IPv4 address.

The state lives behind :class:`PenaltyState`, in the manner of the store Protocols: the
session asks it and never holds a dict of its own.  :class:`LocalPenaltyState` keeps it in
memory shared by every worker of the node (:mod:`mailslot.server.sharedtable`);
:class:`mailslot.store.postgresql.cluster.ClusterPenaltyState` implements the same three calls
for every node of a database, :class:`PenaltyPolicy`'s arithmetic done in one statement each.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
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
        """Take ``key``'s next permitted password check, or refuse; see the module docstring."""
        ...

    async def failed(self, key: str) -> float:
        """A check granted to ``key`` failed: seconds to hold the failure reply."""
        ...

    async def succeeded(self, key: str) -> None:
        """A login from ``key`` worked: forget its failures."""
        ...


@dataclass(frozen=True, slots=True)
class PenaltyPolicy:
    """The arithmetic of the module docstring, on one key's :class:`Record`; no I/O, no clock.

    ``max_wait`` is how far ahead a slot may be reserved (``failure_delay_max``); a slot
    further away refuses the attempt.
    """

    base: float = 2.0
    cap: float = 15.0
    free: int = 0
    forget_after: float = 900.0

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

    def reserve(self, record: Record | None, now: float) -> tuple[Record | None, Admission]:
        record = self.current(record, now)
        strikes, next_ = (0, now) if record is None else (record.strikes, record.next)
        at = max(now, next_)
        if at - now > self.cap:
            return record, Admission(allowed=False, wait=self.cap)
        strikes = min(strikes + 1, _MAX_STRIKES)
        return Record(strikes, at + self.gap(strikes), now), Admission(True, at - now)

    def failed(self, record: Record | None, now: float) -> tuple[Record, float]:
        record = self.current(record, now)
        # Absent: a success on another connection forgot the address while this check ran.
        strikes, next_ = (1, now) if record is None else (max(1, record.strikes), record.next)
        next_ = max(next_, now + self.gap(strikes))
        return Record(strikes, next_, now), min(next_ - now, self.cap)


class LocalPenaltyState:
    """:class:`PenaltyState` for one node: a :class:`SharedTable` shared by its workers.

    Build it in the parent before the workers are forked (:func:`mailslot.server.runner.run`);
    every worker, replacements and new generations included, then shares its counts.
    ``clock`` must be one clock for all processes: ``time.monotonic`` (``CLOCK_MONOTONIC``)
    is system-wide on Linux.
    """

    def __init__(
        self,
        policy: PenaltyPolicy,
        *,
        slots: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.table = SharedTable(slots)
        self._clock = clock

    async def reserve(self, key: str) -> Admission:
        now = self._clock()
        admission = Admission(True, 0.0)

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

    def strikes(self, key: str) -> int:
        """How many checks ``key`` has been granted since it was last forgotten (for tests)."""
        record = self.policy.current(self.table.get(key), self._clock())
        return 0 if record is None else record.strikes
