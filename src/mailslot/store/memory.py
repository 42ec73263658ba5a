"""The in-memory store: the verified fake other parts' unit tests run against.

It keeps the contract of :mod:`mailslot.store.base` exactly as the Maildir backend does (the
shared contract suite in tests/store runs both): one exclusive lock per user (RFC 1939 section
8, ``[IN-USE]`` of RFC 2449), a snapshot taken at open, all-or-nothing deletion, RFC 1939 wire
sizes and unique-ids that are never reused.  ``fail`` lets a test make the next call of an
operation raise a chosen :class:`StoreError` (``store.fail["delete"] = TemporaryFailure()``);
``fail_removal_at`` makes a deletion fail to remove its n-th message (from 1), as the Maildir
backend does when an unlink keeps failing: the others go, :class:`PartialDeletion` is raised
and that one goes at the next open.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from mailslot.store.base import (
    MaildropLocked,
    MessageGone,
    MessageInfo,
    Owner,
    PartialDeletion,
    StoreError,
    TemporaryFailure,
)
from mailslot.store.wiresize import wire_size


@dataclass(frozen=True, slots=True)
class _Stored:
    key: str
    data: bytes


class MemoryMaildrop:
    """One user's locked in-memory maildrop."""

    def __init__(self, store: MemoryStore, user: str, messages: Sequence[MessageInfo]) -> None:
        self._store = store
        self._user = user
        self._messages = tuple(messages)
        self._keys = frozenset(m.key for m in messages)
        self._open = True

    @property
    def messages(self) -> Sequence[MessageInfo]:
        return self._messages

    async def read(self, message: MessageInfo, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        if not self._open:
            raise TemporaryFailure("maildrop is closed")
        self._store._take_fault("read")
        data = self._store._data(self._user, message.key) if message.key in self._keys else None
        if data is None:
            raise MessageGone("message has been removed")
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    async def delete(self, messages: Sequence[MessageInfo]) -> None:
        if not self._open:
            raise TemporaryFailure("maildrop is closed")
        self._store._take_fault("delete")
        keys = [key for key in dict.fromkeys(m.key for m in messages) if key in self._keys]
        stop = self._store.fail_removal_at
        if stop is not None and stop <= len(keys):
            self._store.fail_removal_at = None
            failed = keys.pop(stop - 1)
            self._store._remove(self._user, set(keys))
            # As a journal would: it is removed before the next snapshot.
            self._store._pending.setdefault(self._user, set()).add(failed)
            raise PartialDeletion("removal failed", deleted=len(keys), pending=True)
        self._store._remove(self._user, set(keys))

    async def close(self) -> None:
        if self._open:
            self._open = False
            self._store._unlock(self._user)


class MemoryStore:
    """Maildrops in a dict; for tests only."""

    def __init__(self) -> None:
        self._boxes: dict[str, list[_Stored]] = {}
        self._locked: set[str] = set()
        self._serial = itertools.count(1)
        self.fail: dict[str, StoreError] = {}
        self.fail_removal_at: int | None = None
        self._pending: dict[str, set[str]] = {}

    def _take_fault(self, operation: str) -> None:
        error = self.fail.pop(operation, None)
        if error is not None:
            raise error

    def _data(self, user: str, key: str) -> bytes | None:
        for stored in self._boxes.get(user, ()):
            if stored.key == key:
                return stored.data
        return None

    def _remove(self, user: str, keys: set[str]) -> None:
        box = self._boxes.get(user, [])
        self._boxes[user] = [stored for stored in box if stored.key not in keys]

    def _unlock(self, user: str) -> None:
        self._locked.discard(user)

    def put(self, user: str, data: bytes) -> str:
        """Add a message synchronously (for test setup); return its key, which is its uid."""
        # A store-wide serial: keys and uids are never reused, even after deletion.
        key = f"m{next(self._serial)}"
        self._boxes.setdefault(user, []).append(_Stored(key, data))
        return key

    def contents(self, user: str) -> list[bytes]:
        """The messages now stored for ``user``, oldest first (for assertions)."""
        return [stored.data for stored in self._boxes.get(user, ())]

    def is_locked(self, user: str) -> bool:
        return user in self._locked

    async def open(
        self, user: str, home: str | None = None, *, owner: Owner | None = None
    ) -> MemoryMaildrop:
        self._take_fault("open")
        if user in self._locked:
            raise MaildropLocked("maildrop is in use")
        self._locked.add(user)
        self._remove(user, self._pending.pop(user, set()))
        messages = [
            MessageInfo(key=stored.key, uid=stored.key, size=wire_size(stored.data))
            for stored in self._boxes.get(user, ())
        ]
        return MemoryMaildrop(self, user, messages)

    async def deliver(
        self, user: str, data: bytes, home: str | None = None, *, owner: Owner | None = None
    ) -> str:
        self._take_fault("deliver")
        return self.put(user, bytes(data))
