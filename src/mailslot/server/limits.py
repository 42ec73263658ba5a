"""Connection and session limits: total, per source address, per user.

Each ``acquire_*`` either takes a slot and returns True or refuses; the session answers a
refusal with a clear ``-ERR`` (``[SYS/TEMP]`` for connections, ``[IN-USE]`` for users, RFC 2449
section 8 and RFC 3206).

The counts live behind :class:`ConnectionLimits`, in the manner of the penalty's
:class:`~mailslot.server.penalty.PenaltyState`: the server counts in memory shared by all
workers of the node (:class:`~mailslot.server.sharedlimits.SharedLimits`), and a cluster
backend adds the other nodes' counts (:mod:`mailslot.store.postgresql.cluster`).  :class:`Limits`
counts for one process: the verified fake of the unit tests.  The calls are synchronous:
they are made in the accept loop, for every connection, and must cost no round trip.

A connection is counted from its accept, before any PROXY header or TLS handshake: a client
that never sends a byte holds a descriptor as surely as one that logs in.  Until a PROXY
header names the client, the connection counts against the proxy's address;
:meth:`Limits.move_connection` then moves it.  A flood of refused connections is logged by
:class:`RefusalLog`, a line per address and window rather than a line per connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol


class ConnectionLimits(Protocol):
    """The three limits of ``[limits]``: total, per client address, per user."""

    def acquire_connection(self, address: str) -> str | None:
        """Take a connection slot for ``address``; on refusal return the reason."""
        ...

    def move_connection(self, old: str, new: str) -> str | None:
        """Count a connection held under ``old`` under ``new`` (a PROXY header named the
        client); on refusal return the reason and leave it under ``old``."""
        ...

    def release_connection(self, address: str) -> None: ...

    def acquire_user(self, user: str) -> bool:
        """Take a session slot for ``user``; False: over ``max_sessions_per_user``."""
        ...

    def release_user(self, user: str) -> None: ...


class Limits:
    """Counters for the three limits of ``[limits]``, in one process (for tests)."""

    def __init__(self, max_connections: int, per_ip: int, per_user: int) -> None:
        self.max_connections = max_connections
        self.per_ip = per_ip
        self.per_user = per_user
        self.connections = 0
        self._by_ip: Counter[str] = Counter()
        self._by_user: Counter[str] = Counter()

    def acquire_connection(self, address: str) -> str | None:
        """Take a connection slot; on refusal return the reason."""
        if self.connections >= self.max_connections:
            return "too many connections"
        if self._by_ip[address] >= self.per_ip:
            return "too many connections from your address"
        self.connections += 1
        self._by_ip[address] += 1
        return None

    def move_connection(self, old: str, new: str) -> str | None:
        """Count a connection held under ``old`` under ``new`` instead (a PROXY header named
        the client); on refusal return the reason and leave it under ``old``."""
        if old == new:
            return None
        if self._by_ip[new] >= self.per_ip:
            return "too many connections from your address"
        self._by_ip[new] += 1
        self._release_address(old)
        return None

    def release_connection(self, address: str) -> None:
        self.connections -= 1
        self._release_address(address)

    def _release_address(self, address: str) -> None:
        self._by_ip[address] -= 1
        if self._by_ip[address] <= 0:
            del self._by_ip[address]

    def acquire_user(self, user: str) -> bool:
        if self._by_user[user] >= self.per_user:
            return False
        self._by_user[user] += 1
        return True

    def release_user(self, user: str) -> None:
        self._by_user[user] -= 1
        if self._by_user[user] <= 0:
            del self._by_user[user]


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


class RefusalLog:
    """Logs refused connections: the first from an address at once, the rest as a count.

    A flood from one address is thousands of refusals a second; a line each would cost more
    than the refusal and bury everything else in the log.  Within a window of ``window``
    seconds, an address's first refusal is logged and the others are counted; when the window
    ends, one line per address gives the count.  At most ``max_addresses`` are tracked in a
    window (a flood from many addresses costs bounded memory); beyond them refusals are only
    counted, together.
    """

    def __init__(
        self,
        logger: logging.Logger,
        window: float = 10.0,
        *,
        max_addresses: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        later: Callable[[float, Callable[[], None]], _Cancellable] | None = None,
    ) -> None:
        self._logger = logger
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        # ``later(delay, callback)``: by default the running loop's call_later, for the
        # summary of a window in which nothing more is refused.
        self._later = later
        self._counts: dict[str, int] = {}  # address -> refusals not yet logged
        self._others = 0
        self._until = 0.0
        self._flush: _Cancellable | None = None

    def refused(self, address: str, reason: str) -> None:
        now = self._clock()
        if now >= self._until:
            self.flush()
            self._until = now + self.window
        count = self._counts.get(address)
        if count is not None:
            self._counts[address] = count + 1
            self._schedule()
        elif len(self._counts) < self.max_addresses:
            self._counts[address] = 0
            self._logger.info(
                "peer=%s refused: %s (further refusals counted for %gs)",
                address,
                reason,
                self.window,
            )
        else:
            self._others += 1
            self._schedule()

    def flush(self) -> None:
        """Log the counts of the window that ends now."""
        handle, self._flush = self._flush, None
        if handle is not None:
            handle.cancel()  # no-op when it is what calls us
        for address, count in self._counts.items():
            if count:
                self._logger.info(
                    "peer=%s refused %d more connections in %gs", address, count, self.window
                )
        if self._others:
            self._logger.info(
                "refused %d connections from other addresses in %gs", self._others, self.window
            )
        self._counts.clear()
        self._others = 0
        self._until = 0.0

    def _schedule(self) -> None:
        if self._flush is None:
            later = self._later or asyncio.get_running_loop().call_later
            self._flush = later(max(0.0, self._until - self._clock()), self.flush)
