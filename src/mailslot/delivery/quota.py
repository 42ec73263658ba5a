"""Maildrop quota: how much a maildrop holds, and whether one more message fits.

``[delivery] quota_bytes`` and ``quota_messages`` (0 = no limit) bound a maildrop; a delivery
that would exceed either is refused with ``552 5.2.2`` (RFC 3463 section 3.3, X.2.2 "mailbox
full"), as Dovecot's quota plugin does with ``quota_full_tempfail = no``.

Usage is counted from the Maildir itself, without taking the POP3 session lock, so delivery
never waits for a user who is logged in: every regular file in new/ and cur/ whose name does
not start with ``.``, its size taken from the ``,S=`` field Dovecot and mailslot write into the
name, else from ``stat``.  tmp/ is not counted (deliveries in progress).  Two concurrent
deliveries may both fit and together exceed the quota by one message: a soft limit, as
Dovecot's Maildir++ quota is.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mailslot.config import DeliveryConfig

_PHYSICAL = re.compile(r",S=(\d+)")


@dataclass(frozen=True, slots=True)
class Usage:
    """What a maildrop holds: octets as stored, and messages."""

    octets: int
    messages: int


UsageProbe = Callable[[str, str | None], Awaitable[Usage]]
"""``probe(user, home)``: the current usage of a user's maildrop."""


@runtime_checkable
class HasMaildirPath(Protocol):
    """A store that can say where a user's Maildir is (:class:`MaildirStore` can)."""

    def path_for(self, user: str, home: str | None = None) -> str: ...


@runtime_checkable
class HasUsage(Protocol):
    """A store that counts its own usage (a non-Maildir backend)."""

    async def usage(self, user: str, home: str | None = None) -> Usage: ...


def maildir_usage(maildir: str) -> Usage:
    """Count new/ and cur/ of ``maildir`` (see the module docstring); blocking, call in a thread.

    A missing Maildir or subdirectory counts as empty: the first delivery creates it.
    """
    octets = 0
    messages = 0
    for sub in ("new", "cur"):
        try:
            entries = list(os.scandir(os.path.join(maildir, sub)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            found = _PHYSICAL.search(entry.name.partition(":")[0])
            if found is not None:
                size = int(found.group(1))
            else:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted by a POP3 session while we looked
                if not stat.S_ISREG(info.st_mode):
                    continue
                size = info.st_size
            octets += size
            messages += 1
    return Usage(octets, messages)


def probe_for(store: object) -> UsageProbe | None:
    """A usage probe for ``store``, or None if it cannot count (quota then cannot be enforced)."""
    if isinstance(store, HasUsage):
        return store.usage
    if isinstance(store, HasMaildirPath):
        maildir_store = store

        async def probe(user: str, home: str | None) -> Usage:
            path = maildir_store.path_for(user, home)
            return await asyncio.to_thread(maildir_usage, path)

        return probe
    return None


def enabled(config: DeliveryConfig) -> bool:
    """Whether any quota is configured."""
    return config.quota_bytes > 0 or config.quota_messages > 0


def fits(usage: Usage, size: int, config: DeliveryConfig) -> bool:
    """Whether one more message of ``size`` octets stays within the quota."""
    if config.quota_bytes > 0 and usage.octets + size > config.quota_bytes:
        return False
    return not (config.quota_messages > 0 and usage.messages + 1 > config.quota_messages)
