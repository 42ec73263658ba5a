"""A fixed-size table of small records in memory shared by a parent and the workers it forks.

The failure penalty (:mod:`mailslot.server.penalty`) must see one count per client address
across all workers of a node, and the supervisor forks workers from a parent that outlives
them (it replaces dead workers and forks new generations on SIGHUP).  So the table is made
once, in the parent, before any fork: a ``memfd`` mapped ``MAP_SHARED``, which every process
forked later maps at the same pages.

- **Bounded memory.**  ``slots`` records of 40 bytes (65,536 by default: 2.5 MiB), in buckets
  of ``ways`` slots.  A key lives only in its bucket; a new key takes a free slot of it, else
  evicts the one touched longest ago.  Keys are hashed with a secret made at start-up
  (BLAKE2b keyed), so a client cannot pick addresses that fill one bucket to evict another's.
- **Locking that survives a crash.**  A bucket is locked with a POSIX record lock
  (``fcntl(F_SETLKW)``) on its bytes of the memfd: the kernel drops it when the process holding
  it dies, so a worker killed in the middle of an update (OOM, SIGKILL) cannot leave the table
  locked for the others, as a process-shared semaphore would.  Record locks do not exclude
  threads of one process from each other, so a :class:`threading.Lock` is taken as well.

The records are read and written in place with :mod:`struct`; nothing is cached per process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import secrets
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Record", "SharedTable"]

# key (16 bytes, all zero: a free slot), strikes, next (monotonic seconds), touched (ditto)
_RECORD = struct.Struct("<16sI4xdd")
FREE = bytes(16)  # the digest of a free slot
_FREE = FREE


@dataclass(frozen=True, slots=True)
class Record:
    """What the table keeps per key: a count and two times on the shared monotonic clock."""

    strikes: int
    next: float
    touched: float


class SharedBuckets:
    """``slots`` fixed-size records in ``MAP_SHARED`` memory, in buckets of ``ways`` slots, a
    key's bucket chosen by a keyed hash and locked as the module docstring says.  The base of
    :class:`SharedTable` and :class:`mailslot.server.sharedcounts.SharedCounts`.

    Create it in the process that forks; every child forked afterwards shares it.
    """

    def __init__(self, slots: int, ways: int, record_size: int, name: str) -> None:
        if slots < ways or ways < 1:
            raise ValueError("a table needs at least one bucket of at least one slot")
        self.ways = ways
        self.buckets = slots // ways
        self._bucket_size = ways * record_size
        size = self.buckets * self._bucket_size
        self._fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self._fd, size)  # zero-filled: every slot starts free
        self._map = mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED)
        self._secret = secrets.token_bytes(16)
        self._thread_lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes of shared memory the table holds (it never grows)."""
        return len(self._map)

    def _locate(self, key: str) -> tuple[bytes, int]:
        """``key``'s 16-byte digest (never the free marker) and its bucket's offset."""
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16, key=self._secret).digest()
        if digest == _FREE:  # pragma: no cover - one chance in 2**128
            digest = b"\x01" + digest[1:]
        return digest, (int.from_bytes(digest[:8], "little") % self.buckets) * self._bucket_size

    @contextlib.contextmanager
    def _locked(self, start: int, length: int) -> Iterator[None]:
        """Hold ``length`` bytes from ``start`` against every process and thread."""
        with self._thread_lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, length, start, os.SEEK_SET)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, length, start, os.SEEK_SET)


class SharedTable(SharedBuckets):
    """``slots`` penalty records in ``MAP_SHARED`` memory; see the module docstring."""

    def __init__(self, slots: int = 65_536, ways: int = 8) -> None:
        super().__init__(slots, ways, _RECORD.size, "mailslot-penalty")

    def update(self, key: str, change: Callable[[Record | None], Record | None]) -> None:
        """Replace ``key``'s record by ``change(record)`` (``None``: absent / remove it).

        ``change`` runs with the key's bucket locked in every process, so a read-modify-write
        through it is atomic; it must be quick and must not call back into the table.
        """
        digest, start = self._locate(key)
        with self._locked(start, self._bucket_size):
            self._update(digest, start, change)

    def get(self, key: str) -> Record | None:
        """``key``'s record, for tests and diagnostics."""
        found: list[Record | None] = []

        def keep(record: Record | None) -> Record | None:
            found.append(record)
            return record

        self.update(key, keep)
        return found[0]

    def _update(
        self, digest: bytes, start: int, change: Callable[[Record | None], Record | None]
    ) -> None:
        data = self._map
        found = free = oldest = -1
        oldest_touched = float("inf")
        for offset in range(start, start + self._bucket_size, _RECORD.size):
            key, _, _, touched = _RECORD.unpack_from(data, offset)
            if key == digest:
                found = offset
                break
            if key == _FREE:
                if free < 0:
                    free = offset
            elif touched < oldest_touched:
                oldest, oldest_touched = offset, touched
        if found >= 0:
            _, strikes, next_, touched = _RECORD.unpack_from(data, found)
            new = change(Record(strikes, next_, touched))
            if new is None:
                _RECORD.pack_into(data, found, _FREE, 0, 0.0, 0.0)
            else:
                _RECORD.pack_into(data, found, digest, new.strikes, new.next, new.touched)
            return
        new = change(None)
        if new is None:
            return
        # A full bucket gives up the record touched longest ago: the address least likely
        # to be guessing now.
        slot = free if free >= 0 else oldest
        _RECORD.pack_into(data, slot, digest, new.strikes, new.next, new.touched)
