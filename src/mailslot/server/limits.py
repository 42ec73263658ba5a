"""Connection and session limits: total, per source address, per user.

Each ``acquire_*`` either takes a slot and returns True or refuses; the session answers a
refusal with a clear ``-ERR`` (``[SYS/TEMP]`` for connections, ``[IN-USE]`` for users, RFC 2449
section 8 and RFC 3206).
"""

from __future__ import annotations

from collections import Counter


class Limits:
    """Counters for the three limits of ``[limits]``."""

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

    def release_connection(self, address: str) -> None:
        self.connections -= 1
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
