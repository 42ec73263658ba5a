"""Counters in memory shared by a parent and the workers it forks, each count owned by a process.

The connection limits (:mod:`mailslot.server.sharedlimits`) must see one count per client
address, per user and in all across every worker of a node.  As for the failure penalty's
:mod:`~mailslot.server.sharedtable`, the table is a ``memfd`` mapped ``MAP_SHARED`` in the
parent before any fork, and a bucket is locked with a POSIX record lock, which the kernel drops
when its holder dies.

**Ownership.**  A key's count is kept as one record per *owner* (the pid of the worker that
took the slots): its total is the sum of its records.  A worker that dies without releasing
its slots (SIGKILL, the OOM killer) leaves its records behind; the supervisor, which reaps
it, calls :meth:`SharedCounts.reclaim` with its pid before it forks a replacement, and the
slots are free again.  (A pid is not reused before its process is reaped, so no live worker
can share the dead one's records.)

**Bounded memory, no eviction.**  Counts cannot be evicted as penalty records are (that would
hand out slots), so the table is sized from the limits, several times the most records the
counted connections can need, and keys are hashed with a secret made at start-up (keyed
BLAKE2b) so no client chooses its bucket.  If a bucket is full nevertheless, :meth:`add`
refuses, as a limit does: the server stays within its limits rather than beyond them.
"""

from __future__ import annotations

import os
import struct

from mailslot.server.sharedtable import FREE as _FREE
from mailslot.server.sharedtable import SharedBuckets

__all__ = ["SharedCounts"]

# key digest (16 bytes, all zero: a free slot), owner pid, count
_RECORD = struct.Struct("<16sIi")


class SharedCounts(SharedBuckets):
    """``slots`` counters in ``MAP_SHARED`` memory; see the module docstring.

    Create it in the process that forks; every child forked afterwards shares it.
    """

    def __init__(self, slots: int = 4096, ways: int = 32) -> None:
        super().__init__(slots, ways, _RECORD.size, "mailslot-limits")

    def add(self, key: str, delta: int, limit: int | None = None, *, owner: int = 0) -> bool:
        """Add ``delta`` to ``owner``'s count of ``key`` (default owner: this process).

        With ``limit``, an increase that would take the key's total over it is refused
        (False) and nothing changes; so is one that finds the key's bucket full.  The check
        and the change are one step for every process.
        """
        owner = owner or os.getpid()
        digest, start = self._locate(key)
        with self._locked(start, self._bucket_size):
            return self._add(digest, start, owner, delta, limit)

    def _add(self, digest: bytes, start: int, owner: int, delta: int, limit: int | None) -> bool:
        data = self._map
        total = 0
        mine = free = -1
        count = 0
        for offset in range(start, start + self._bucket_size, _RECORD.size):
            key, who, n = _RECORD.unpack_from(data, offset)
            if key == digest:
                total += n
                if who == owner:
                    mine, count = offset, n
            elif key == _FREE and free < 0:
                free = offset
        if delta > 0 and limit is not None and total + delta > limit:
            return False
        count += delta
        if mine < 0:
            if count <= 0:
                return True  # a release of what the supervisor already reclaimed
            if free < 0:
                return False
            mine = free
        if count <= 0:
            _RECORD.pack_into(data, mine, _FREE, 0, 0)
        else:
            _RECORD.pack_into(data, mine, digest, owner, count)
        return True

    def total(self, key: str) -> int:
        """The sum of every owner's count of ``key``."""
        digest, start = self._locate(key)
        total = 0
        with self._locked(start, self._bucket_size):
            for offset in range(start, start + self._bucket_size, _RECORD.size):
                found, _, n = _RECORD.unpack_from(self._map, offset)
                if found == digest:
                    total += n
        return total

    def reclaim(self, owner: int) -> int:
        """Drop every count ``owner`` (a dead worker's pid) held; the sum of those counts."""
        dropped = 0
        data = self._map
        with self._locked(0, len(data)):
            for offset in range(0, len(data), _RECORD.size):
                key, who, n = _RECORD.unpack_from(data, offset)
                if who == owner and key != _FREE:
                    dropped += n
                    _RECORD.pack_into(data, offset, _FREE, 0, 0)
        return dropped
