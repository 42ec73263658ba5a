"""``[limits]`` counted once per node, whichever worker takes a connection.

:class:`SharedLimits` is the server's :class:`~mailslot.server.limits.ConnectionLimits`: its
counts are in a :class:`~mailslot.server.sharedcounts.SharedCounts` made by the parent before
the workers are forked, so ``max_connections``, ``max_connections_per_ip`` and
``max_sessions_per_user`` hold for the node, not for each worker (with two workers, a count
per worker let an address hold twice its connections and let a user's second login reach the
maildrop lock).  A worker killed without releasing its slots has them reclaimed by the
supervisor when it replaces it (:meth:`SharedCounts.reclaim`).

**Keys.**  ``*`` for all connections, ``a:<client>`` per client, where an IPv6 client is its
``[auth] ipv6_prefix`` network as for the failure penalty
(:func:`~mailslot.server.penalty.address_key`), and ``u:<user>`` per user.

**Across nodes.**  ``elsewhere(key)``, when given, is the count of ``key`` on the other nodes
of a cluster, from a view refreshed in the background (:mod:`mailslot.store.postgresql.cluster`):
the per-client limit then holds for the cluster, as fresh as that view (the per-user one
stays the node's: across nodes the maildrop lease admits one session per user, exactly).
``max_connections`` protects the node's own resources and stays per node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from mailslot.server.penalty import address_key
from mailslot.server.sharedcounts import SharedCounts

__all__ = ["SharedLimits", "table_for"]

TOTAL = "*"
TOO_MANY = "too many connections"
TOO_MANY_FROM_YOU = "too many connections from your address"


def table_for(max_connections: int, workers: int) -> SharedCounts:
    """A table with room for the records of ``max_connections`` connections of ``workers``
    workers (and as many retiring ones) several times over, so that no bucket fills: each
    connection holds at most two records (its client, its user), each process one of ``*``."""
    ways = max(32, 4 * workers + 8)  # every process's ``*`` record is in one bucket
    records = 2 * max_connections + 2 * workers
    buckets = max(1, (4 * records + ways - 1) // ways)
    return SharedCounts(buckets * ways, ways)


class SharedLimits:
    """:class:`~mailslot.server.limits.ConnectionLimits` of one node; see the module docstring.

    ``process_connections``: what this process may hold whatever the node's limit (its open
    file limit, :func:`mailslot.server.runner.connections_within`).
    """

    def __init__(
        self,
        counts: SharedCounts,
        max_connections: int,
        per_ip: int,
        per_user: int,
        *,
        ipv6_prefix: int = 64,
        process_connections: int | None = None,
        elsewhere: Callable[[str], int] | None = None,
    ) -> None:
        self.counts = counts
        self.max_connections = max_connections
        self.per_ip = per_ip
        self.per_user = per_user
        self.ipv6_prefix = ipv6_prefix
        self.process_connections = process_connections or max_connections
        self.elsewhere = elsewhere
        self.connections = 0  # this process's
        # This process's counts by key (for publishing them to a cluster, and for tests).
        self.held: Counter[str] = Counter()

    def key(self, address: str) -> str:
        return "a:" + address_key(address, self.ipv6_prefix)

    def _take(self, key: str, limit: int) -> bool:
        if self.elsewhere is not None:
            limit -= self.elsewhere(key)
        if not self.counts.add(key, 1, limit):
            return False
        self.held[key] += 1
        return True

    def _give(self, key: str) -> None:
        self.counts.add(key, -1)
        self.held[key] -= 1
        if self.held[key] <= 0:
            del self.held[key]

    def acquire_connection(self, address: str) -> str | None:
        if self.connections >= self.process_connections:
            return TOO_MANY
        key = self.key(address)
        if not self.counts.add(TOTAL, 1, self.max_connections):
            return TOO_MANY
        if not self._take(key, self.per_ip):
            self.counts.add(TOTAL, -1)
            return TOO_MANY_FROM_YOU
        self.connections += 1
        return None

    def move_connection(self, old: str, new: str) -> str | None:
        old_key, new_key = self.key(old), self.key(new)
        if old_key == new_key:
            return None
        if not self._take(new_key, self.per_ip):
            return TOO_MANY_FROM_YOU
        self._give(old_key)
        return None

    def release_connection(self, address: str) -> None:
        self.connections -= 1
        self.counts.add(TOTAL, -1)
        self._give(self.key(address))

    def acquire_user(self, user: str) -> bool:
        # The node's count only, never the cluster's view: across nodes the maildrop lease
        # admits one session per user exactly and at once, where the published counts lag by
        # up to two refreshes (a user who logs out on one node and straight back in through
        # another would be refused for seconds) and outlive a dead node by three.
        if not self.counts.add("u:" + user, 1, self.per_user):
            return False
        self.held["u:" + user] += 1
        return True

    def release_user(self, user: str) -> None:
        self._give("u:" + user)

    def node_total(self, key: str) -> int:
        """The node's count of ``key`` (every worker's), for tests and diagnostics."""
        return self.counts.total(key)
