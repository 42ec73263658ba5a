"""``mailslot mailbox status``: a maildrop's messages, size, oldest message and lock, read
without taking the lock (RFC 1939 section 8's exclusive lock is the sessions' alone).

For a Maildir the ``new/`` and ``cur/`` directories are listed through descriptors walked
without symlinks (:mod:`mailslot.store.confine`); ``octets`` is the files' size on disk (a
message with LF line ends is a little larger in STAT, which counts CRLF).  Whether the maildrop
is locked is read from ``/proc/locks`` (the ``flock`` on ``.mailslot.lock``, and the pid that
holds it), so that looking never makes a login fail with ``[IN-USE]``; the admin server adds
the sessions of that user on every worker.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
from pathlib import Path
from typing import Any

from mailslot.auth.base import Authenticator, AuthError
from mailslot.store import confine
from mailslot.store.base import Store, StoreError
from mailslot.store.maildir import LOCK_FILE, MaildirStore

_PROC_LOCKS = Path("/proc/locks")


class NoSuchUser(LookupError):
    """The user database does not know the user."""


class Unavailable(Exception):
    """The status cannot be read (the message says why)."""


async def status(store: Store, users: Authenticator, name: str) -> dict[str, Any]:
    """``{"user", "messages", "octets", "oldest", "lock_pids", "store"}`` of ``name``."""
    try:
        user = await users.lookup(name)
    except AuthError as exc:
        raise Unavailable(f"the user database: {exc}") from None
    if user is None:
        raise NoSuchUser(name)
    if not isinstance(store, MaildirStore):
        if getattr(store, "lease_seconds", None) is not None:  # PostgresStore, without asyncpg
            try:
                return {
                    "user": user.name,
                    "store": "postgresql",
                    **await postgres_status(store, user.name),
                }
            except StoreError as exc:
                raise Unavailable(f"cannot read the maildrop: {exc}") from None
        raise Unavailable(
            f"mailbox status reads Maildir and PostgreSQL stores, not {type(store).__name__}"
        )
    try:
        result = await asyncio.to_thread(maildir_status, store, user.name, user.home)
    except (StoreError, OSError) as exc:
        raise Unavailable(f"cannot read the maildrop: {exc}") from None
    return {"user": user.name, "store": "maildir", **result}


def maildir_status(store: MaildirStore, user: str, home: str | None) -> dict[str, Any]:
    """Count ``user``'s messages without locking or changing anything (blocking)."""
    messages = octets = 0
    oldest: float | None = None
    lock_pids: list[int] = []
    try:
        maildir = store.maildir_directory(user, home)
    except FileNotFoundError:
        maildir = None  # no mail was ever delivered: an empty maildrop
    if maildir is not None:
        try:
            for sub in ("new", "cur"):
                try:
                    directory = confine.open_directory(maildir, sub, sub)
                except FileNotFoundError:
                    continue
                try:
                    with os.scandir(directory) as entries:
                        for entry in entries:
                            if entry.name.startswith("."):
                                continue
                            try:
                                info = entry.stat(follow_symlinks=False)
                            except FileNotFoundError:
                                continue  # taken by a session meanwhile
                            if not stat.S_ISREG(info.st_mode):
                                continue
                            messages += 1
                            octets += info.st_size
                            if oldest is None or info.st_mtime < oldest:
                                oldest = info.st_mtime
                finally:
                    os.close(directory)
            try:
                lock = os.stat(LOCK_FILE, dir_fd=maildir, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                lock_pids = flock_holders(lock.st_dev, lock.st_ino)
        finally:
            os.close(maildir)
    return {
        "messages": messages,
        "octets": octets,
        "oldest": None if oldest is None else _iso(oldest),
        "lock_pids": lock_pids,
    }


_PG_STATUS = """
SELECT count(m.seq), coalesce(sum(m.wire_size), 0), min(m.delivered)
FROM mailslot_accounts a LEFT JOIN mailslot_messages m ON m.account_id = a.account_id
WHERE a.name = $1
"""
_PG_LEASE = """
SELECT l.node, l.acquired, l.expires, l.expires > now()
FROM mailslot_accounts a JOIN mailslot_leases l ON l.account_id = a.account_id
WHERE a.name = $1
"""


async def postgres_status(store: Any, user: str) -> dict[str, Any]:
    """The account's messages (``octets``: their exact STAT size) and its lease, if any:
    which node holds it, since when, until when (RFC 1939 section 8's lock across nodes)."""
    async with store.connection() as connection:
        messages, octets, oldest = await connection.fetchrow(_PG_STATUS, user)
        lease = await connection.fetchrow(_PG_LEASE, user)
    held = None
    if lease is not None:
        node, acquired, expires, live = lease
        held = {
            "node": node,
            "acquired": _iso(acquired.timestamp()),
            "expires": _iso(expires.timestamp()),
            "live": bool(live),
        }
    return {
        "messages": int(messages),
        "octets": int(octets),
        "oldest": None if oldest is None else _iso(oldest.timestamp()),
        "lock_pids": [],
        "lease": held,
    }


def flock_holders(device: int, inode: int, text: str | None = None) -> list[int]:
    """The pids ``/proc/locks`` names as holding a ``flock`` on the file (proc(5))."""
    if text is None:
        try:
            text = _PROC_LOCKS.read_text(encoding="ascii", errors="replace")
        except OSError:
            return []
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}:{inode}"
    pids = []
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:56789 0 EOF"; a waiter's line has "->".
        fields = line.split()
        if len(fields) < 6 or "->" in fields or fields[1] != "FLOCK":
            continue
        if fields[5] == wanted and fields[4].isdigit():
            pids.append(int(fields[4]))
    return sorted(set(pids))


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
