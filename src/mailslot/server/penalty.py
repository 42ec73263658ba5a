"""A per-source-address delay after failed logins (slows password guessing).

The first failure from an address costs ``base`` seconds, each further one doubles it up to
``cap``; a success or ``forget_after`` seconds without failures resets it.  The delay is
served by the failing session alone (an ``asyncio.sleep`` before its ``-ERR``), so other
addresses and other sessions are never slowed.  The clock is injected for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Record:
    failures: int
    last: float


class FailurePenalty:
    """Tracks failures per address and says how long the next reply must wait."""

    def __init__(
        self,
        base: float = 2.0,
        cap: float = 15.0,
        forget_after: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 100_000,
    ) -> None:
        self._base = base
        self._cap = cap
        self._forget_after = forget_after
        self._clock = clock
        self._max = max_addresses
        self._records: dict[str, _Record] = {}

    def failed(self, address: str) -> float:
        """Record a failure from ``address``; return the delay to apply before replying."""
        now = self._clock()
        record = self._records.get(address)
        if record is None or now - record.last > self._forget_after:
            if len(self._records) >= self._max:
                self._expire(now)
            record = self._records[address] = _Record(0, now)
        record.failures += 1
        record.last = now
        if self._base <= 0:
            return 0.0
        return float(min(self._cap, self._base * 2 ** min(record.failures - 1, 30)))

    def succeeded(self, address: str) -> None:
        """A login from ``address`` worked: forget its failures."""
        self._records.pop(address, None)

    def failures(self, address: str) -> int:
        record = self._records.get(address)
        return 0 if record is None else record.failures

    def _expire(self, now: float) -> None:
        stale = [a for a, r in self._records.items() if now - r.last > self._forget_after]
        for address in stale:
            del self._records[address]
        if len(self._records) >= self._max:
            # Still full: drop the oldest half rather than grow without bound.
            oldest = sorted(self._records, key=lambda a: self._records[a].last)
            for address in oldest[: len(oldest) // 2]:
                del self._records[address]
