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
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from mailslot.auth.extrafields import ExtraFields
from mailslot.config import DeliveryConfig
from mailslot.store import confine

_PHYSICAL = re.compile(r",S=(\d+)")


@dataclass(frozen=True, slots=True)
class Usage:
    """What a maildrop holds: octets as stored, and messages."""

    octets: int
    messages: int


UsageProbe = Callable[[str, str | None], Awaitable[Usage]]
"""``probe(user, home)``: the current usage of a user's maildrop."""


@runtime_checkable
class HasMaildirDirectory(Protocol):
    """A store that opens a user's Maildir without following symlinks (:class:`MaildirStore`).

    ``maildir_directory`` returns a descriptor of it, or raises FileNotFoundError if it does
    not exist yet; it blocks.
    """

    def maildir_directory(self, user: str, home: str | None = None) -> int: ...


@runtime_checkable
class HasUsage(Protocol):
    """A store that counts its own usage (a non-Maildir backend)."""

    async def usage(self, user: str, home: str | None = None) -> Usage: ...


def maildir_usage(maildir: int) -> Usage:
    """Count new/ and cur/ of the Maildir whose descriptor is ``maildir`` (see the module
    docstring); blocking, call in a thread.

    A missing subdirectory counts as empty: the first delivery creates it.  Neither is
    followed if it is a symlink (issue 15): that is refused as the delivery itself is.
    """
    octets = 0
    messages = 0
    for sub in ("new", "cur"):
        try:
            directory = confine.open_directory(maildir, sub, sub)
        except FileNotFoundError:
            continue
        try:  # an entry's stat() needs the descriptor still open
            for entry in os.scandir(directory):
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
        finally:
            os.close(directory)
    return Usage(octets, messages)


def probe_for(store: object) -> UsageProbe | None:
    """A usage probe for ``store``, or None if it cannot count (quota then cannot be enforced)."""
    if isinstance(store, HasUsage):
        return store.usage
    if isinstance(store, HasMaildirDirectory):
        maildir_store = store

        def count(user: str, home: str | None) -> Usage:
            try:
                maildir = maildir_store.maildir_directory(user, home)
            except FileNotFoundError:
                return Usage(0, 0)  # the first delivery creates it
            try:
                return maildir_usage(maildir)
            finally:
                os.close(maildir)

        async def probe(user: str, home: str | None) -> Usage:
            return await asyncio.to_thread(count, user, home)

        return probe
    return None


def for_user(config: DeliveryConfig, extra: ExtraFields | None) -> DeliveryConfig:
    """``config``'s quotas, or a user's own from Dovecot's ``userdb_quota_rule``
    (:func:`mailslot.auth.extrafields.parse_quota_rule`; 0 there is no limit)."""
    if extra is None or (extra.quota_bytes is None and extra.quota_messages is None):
        return config
    return replace(
        config,
        quota_bytes=config.quota_bytes if extra.quota_bytes is None else extra.quota_bytes,
        quota_messages=(
            config.quota_messages if extra.quota_messages is None else extra.quota_messages
        ),
    )


def enabled(config: DeliveryConfig) -> bool:
    """Whether any quota is configured."""
    return config.quota_bytes > 0 or config.quota_messages > 0


def fits(usage: Usage, size: int, config: DeliveryConfig) -> bool:
    """Whether one more message of ``size`` octets stays within the quota."""
    if config.quota_bytes > 0 and usage.octets + size > config.quota_bytes:
        return False
    return not (config.quota_messages > 0 and usage.messages + 1 > config.quota_messages)
