"""The Maildir backend: one Maildir per user (cr.yp.to/proto/maildir.html), as Dovecot lays it out.

RFC 1939 section 3 and 8 ask for an exclusive lock and a stable snapshot for the session:
``open`` takes ``flock`` on ``<maildir>/.mailslot.lock`` (it conflicts even within one process
and vanishes with a dead process), finishes an interrupted deletion
(:mod:`mailslot.store.expunge`), moves new/ into cur/ as ``<base>:2,`` as Dovecot does, and lists
cur/ in delivery order.  Unique-ids (RFC 1939 section 7) and keys are derived from the immutable
base name only, so they survive the loss of every file of ours.  Sizes are RFC 1939 wire sizes:
``,W=`` in the name, else the size cache (:mod:`mailslot.store.sizecache`), else computed once.

Only regular files whose names do not start with ``.`` are ever listed or opened; symlinks,
FIFOs, directories and tmp/ are not.  Renames, fsyncs, writes and the scans of large maildrops
run in a worker thread, never on the event loop.  A small maildrop that needs none of them (no
journal, nothing in new/, at most :data:`INLINE_LIMIT` messages, every size known) is opened on
the loop: a handful of metadata calls on a directory that is in the page cache cost less than
the hop to a thread and back, which was a third of the server's CPU per login.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from mailslot.store import expunge, fsutil, sizecache
from mailslot.store.base import (
    MaildropLocked,
    MessageGone,
    MessageInfo,
    PermanentFailure,
    StoreError,
    TemporaryFailure,
)
from mailslot.store.fsutil import Fsync
from mailslot.store.maildirnames import UniqueNames, base_of, parse, uid_of
from mailslot.store.paths import expand
from mailslot.store.wiresize import WireSizeCounter, wire_size

LOCK_FILE = ".mailslot.lock"
SIZE_CACHE = ".mailslot-sizes"
READ_SIZE = 256 * 1024
# The most messages a maildrop may hold to be opened on the event loop (see above): one
# getdents batch and a few dozen microseconds of name parsing.
INLINE_LIMIT = 256

_OPEN_MESSAGE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_MESSAGE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Errors an administrator has to fix; everything else (ENOSPC, EDQUOT, EIO, ...) may pass.
_PERMANENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ELOOP, errno.EROFS, errno.ENAMETOOLONG}
)

_T = TypeVar("_T")


def store_error(exc: OSError) -> StoreError:
    """Translate an OSError into the store's own error, keeping only the errno's name."""
    name = errno.errorcode.get(exc.errno or 0, "unknown error")
    if exc.errno in _PERMANENT_ERRNOS:
        return PermanentFailure(f"maildir: {name}")
    return TemporaryFailure(f"maildir: {name}")


def _makedirs(path: str) -> None:
    # os.makedirs gives only the leaf our mode; every level we create is private.
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs(parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


def ensure_maildir(maildir: str) -> None:
    """Create the Maildir and its cur/ new/ tmp/ (mode 0700) if missing."""
    for sub in ("cur", "new", "tmp"):
        _makedirs(os.path.join(maildir, sub))


def _lock(maildir: str) -> int:
    fd = os.open(
        os.path.join(maildir, LOCK_FILE),
        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MaildropLocked("maildrop is in use") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _measure(path: str) -> tuple[int, int] | None:
    """Read a message once for its (physical, wire) sizes; None if it is gone or not regular."""
    try:
        fd = os.open(path, _OPEN_MESSAGE)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        counter = WireSizeCounter()
        while chunk := os.read(fd, READ_SIZE):
            counter.feed(chunk)
        return counter.physical, counter.wire
    finally:
        os.close(fd)


class _WouldBlock(Exception):
    """A quick snapshot met work for a worker thread: renames, measuring, a cache write."""


def _scan(directory: str, limit: int | None = None) -> list[os.DirEntry[str]]:
    """The regular, non-dot entries; with ``limit``, more of them (or none) is _WouldBlock."""
    found: list[os.DirEntry[str]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    found.append(entry)
                    if limit is not None and len(found) > limit:
                        raise _WouldBlock
    except FileNotFoundError:
        if limit is not None:  # the thread's ensure_maildir() creates it
            raise _WouldBlock from None
    return found


def take_snapshot(
    maildir: str, *, limit: int | None = None
) -> tuple[list[MessageInfo], dict[str, str]]:
    """List the maildrop: messages in delivery order and each key's path in the maildir.

    This runs at every login on maildrops of 100,000 messages, hence one pass per directory
    and no per-message work beyond a few string operations (no stat, no read) for names
    that carry ``,W=``.  With ``limit`` it only reads (a quick snapshot for the event loop)
    and raises :class:`_WouldBlock` instead of renaming, measuring, rewriting the size cache
    or listing more than ``limit`` messages.
    """
    # base -> path relative to the maildir, and base -> its directory entry
    locations: dict[str, str] = {}
    entries: dict[str, os.DirEntry[str]] = {}
    new_dir = os.path.join(maildir, "new")
    cur_dir = os.path.join(maildir, "cur")
    quick = limit is not None
    for entry in _scan(new_dir, 0 if quick else None):
        target = entry.name if ":" in entry.name else entry.name + ":2,"
        target_path = os.path.join(cur_dir, target)
        # Never rename over a file of the same name: one of the two would be lost.
        if not os.path.lexists(target_path):
            try:
                os.rename(entry.path, target_path)
                continue
            except FileNotFoundError:
                continue
            except OSError:
                pass
        base = base_of(entry.name)
        if base not in locations:
            locations[base] = "new/" + entry.name
            entries[base] = entry
    for entry in _scan(cur_dir, limit):
        name = entry.name
        base = name.partition(":")[0]
        relative = "cur/" + name
        previous = locations.get(base)
        # Two files with one base (a copy left in new/, or flags set twice): serve one, stably.
        if previous is None or relative < previous:
            locations[base] = relative
            entries[base] = entry

    cache_path = os.path.join(maildir, SIZE_CACHE)
    old_cache: sizecache.CacheEntries | None = None
    cache_hits: list[str] = []
    measured: sizecache.CacheEntries = {}
    ordered: list[tuple[float, str, int]] = []
    for base in locations:
        order, wire = parse(base)
        if wire is None:
            if old_cache is None:
                old_cache = sizecache.load(cache_path)
            entry = entries[base]
            physical = entry.stat(follow_symlinks=False).st_size
            cached = old_cache.get(base)
            if cached is not None and cached[0] == physical:
                wire = cached[1]
                cache_hits.append(base)
            else:
                if quick:
                    raise _WouldBlock
                sizes = _measure(entry.path)
                if sizes is None:
                    continue
                wire = sizes[1]
                if sizecache.cacheable(base):
                    measured[base] = sizes
        ordered.append((order, base, wire))

    if old_cache is None and os.path.lexists(cache_path):
        # No message needed the cache now; empty it of entries for messages now gone.
        old_cache = sizecache.load(cache_path)
    # Rewrite only if something was measured or some entry's message is gone.
    if old_cache is not None and (measured or len(cache_hits) != len(old_cache)):
        if quick:
            raise _WouldBlock
        fresh = {base: old_cache[base] for base in cache_hits}
        fresh.update(measured)
        # The cache only saves time: a full disk must not stop the login.
        with contextlib.suppress(OSError):
            sizecache.save(cache_path, fresh)

    ordered.sort()
    messages: list[MessageInfo] = []
    seen_uids: set[str] = set()
    for _, base, wire in ordered:
        uid = uid_of(base)
        if uid in seen_uids:  # only a forged "H<digest>" name can collide with a digest
            uid = uid_of("\n" + base)
        seen_uids.add(uid)
        messages.append(MessageInfo(base, uid, wire))
    return messages, locations


async def _in_thread(function: Callable[[], _T], cleanup: Callable[[_T], None]) -> _T:
    """Run ``function`` in a worker thread; if the caller is cancelled, ``cleanup`` its result.

    A worker thread cannot be interrupted, so a cancelled open() would otherwise leave its
    lock held by an object nobody has.  Whichever side comes second (the worker finishing
    or the caller giving up) does the cleanup, under one lock.
    """
    guard = threading.Lock()
    abandoned = False
    results: list[_T] = []

    def work() -> _T:
        result = function()
        with guard:
            if abandoned:
                cleanup(result)
            else:
                results.append(result)
        return result

    try:
        return await asyncio.to_thread(work)
    except asyncio.CancelledError:
        with guard:
            abandoned = True
            for result in results:
                cleanup(result)
        raise


class MaildirMaildrop:
    """One locked Maildir, open for one POP3 session."""

    # One per logged-in session, idle ones included: no per-instance __dict__.
    __slots__ = ("_fsync", "_locations", "_lock_fd", "_maildir", "_messages")

    def __init__(
        self,
        maildir: str,
        lock_fd: int,
        messages: Sequence[MessageInfo],
        locations: dict[str, str],
        fsync: Fsync,
    ) -> None:
        self._maildir = maildir
        self._lock_fd: int | None = lock_fd
        self._messages = tuple(messages)
        self._locations = locations
        self._fsync = fsync

    @property
    def path(self) -> str:
        return self._maildir

    @property
    def messages(self) -> Sequence[MessageInfo]:
        return self._messages

    def _open_at(self, relative: str) -> int | None:
        """Open a message file safely; None if it is gone or is not a regular file."""
        try:
            fd = os.open(os.path.join(self._maildir, relative), _OPEN_MESSAGE)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink: never follow it
                raise MessageGone("message is no longer a regular file") from None
            raise store_error(exc) from None
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            os.close(fd)
            raise store_error(exc) from None
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise MessageGone("message is no longer a regular file")
        return fd

    def _relocate(self, key: str) -> str | None:
        # Another program (a flag change, a second client) may have renamed the file.
        for sub in ("cur", "new"):
            try:
                names = os.listdir(os.path.join(self._maildir, sub))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise store_error(exc) from None
            for name in names:
                if not name.startswith(".") and base_of(name) == key:
                    return f"{sub}/{name}"
        return None

    async def read(self, message: MessageInfo, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        if self._lock_fd is None:
            raise TemporaryFailure("maildrop is closed")
        relative = self._locations.get(message.key)
        if relative is None:
            raise MessageGone("message is not in this maildrop")
        fd = self._open_at(relative)
        if fd is None:
            moved = await asyncio.to_thread(self._relocate, message.key)
            fd = None if moved is None else self._open_at(moved)
            if moved is None or fd is None:
                raise MessageGone("message has been removed")
            self._locations[message.key] = moved
        try:
            while True:
                try:
                    # Small sequential reads from the page cache; not worth a thread hop.
                    data = os.read(fd, READ_SIZE)
                except OSError as exc:
                    raise store_error(exc) from None
                if not data:
                    return
                for start in range(0, len(data), chunk_size):
                    yield data[start : start + chunk_size]
        finally:
            os.close(fd)

    def _delete(self, keys: list[str]) -> None:
        try:
            expunge.write(self._maildir, keys, self._fsync)
        except OSError as exc:
            raise store_error(exc) from None
        known = {key: self._locations[key] for key in keys}
        try:
            expunge.apply(self._maildir, keys, self._fsync, known)
        except OSError as exc:
            # The journal is durable: the next open() finishes what was started here.
            raise store_error(exc) from None

    async def delete(self, messages: Sequence[MessageInfo]) -> None:
        if self._lock_fd is None:
            raise TemporaryFailure("maildrop is closed")
        # Only keys of this snapshot: a stray MessageInfo must never remove another file.
        keys = list(dict.fromkeys(m.key for m in messages if m.key in self._locations))
        if keys:
            await asyncio.to_thread(self._delete, keys)

    def close_now(self) -> None:
        """Release the lock without awaiting (for cleanup paths). Idempotent."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    async def close(self) -> None:
        self.close_now()


class MaildirStore:
    """Maildrops at ``template`` (``{user}``, ``{localpart}``, ``{domain}``, ``{home}``, ``~/``).

    ``fsync`` is the one call that makes data durable; tests inject a failing one to play a
    full disk.
    """

    def __init__(
        self,
        template: str,
        *,
        fsync: Fsync = os.fsync,
        hostname: str | None = None,
    ) -> None:
        self._template = template
        self._fsync = fsync
        self._names = UniqueNames(hostname)

    def path_for(self, user: str, home: str | None = None) -> str:
        """The Maildir directory of ``user`` (raises :class:`PermanentFailure` if unsafe)."""
        return expand(self._template, user, home)

    def _open(self, maildir: str, lock_fd: int | None) -> MaildirMaildrop:
        try:
            ensure_maildir(maildir)
            if lock_fd is None:
                lock_fd = _lock(maildir)
        except OSError as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            raise store_error(exc) from None
        try:
            expunge.recover(maildir, self._fsync)
            messages, locations = take_snapshot(maildir)
        except OSError as exc:
            os.close(lock_fd)
            raise store_error(exc) from None
        except BaseException:
            os.close(lock_fd)
            raise
        return MaildirMaildrop(maildir, lock_fd, messages, locations, self._fsync)

    def _open_quick(self, maildir: str, lock_fd: int) -> MaildirMaildrop | None:
        """Open a small maildrop without blocking work (see the module docstring), or None."""
        journal = os.path.join(maildir, expunge.JOURNAL)
        try:
            # An interrupted deletion (or the temporary file of one) is finished in the thread.
            if os.path.lexists(journal) or os.path.lexists(journal + ".tmp"):
                return None
            messages, locations = take_snapshot(maildir, limit=INLINE_LIMIT)
        except _WouldBlock:
            return None
        except OSError as exc:
            os.close(lock_fd)
            raise store_error(exc) from None
        except BaseException:
            os.close(lock_fd)
            raise
        return MaildirMaildrop(maildir, lock_fd, messages, locations, self._fsync)

    async def open(self, user: str, home: str | None = None) -> MaildirMaildrop:
        maildir = self.path_for(user, home)
        lock_fd: int | None = None
        try:
            lock_fd = _lock(maildir)
        except (FileNotFoundError, NotADirectoryError):
            pass  # a new user: the worker thread creates the Maildir, then locks it
        except OSError as exc:
            raise store_error(exc) from None
        if lock_fd is not None:
            maildrop = self._open_quick(maildir, lock_fd)
            if maildrop is not None:
                return maildrop
        fd = lock_fd
        return await _in_thread(lambda: self._open(maildir, fd), MaildirMaildrop.close_now)

    def _deliver(self, user: str, data: bytes, home: str | None) -> str:
        maildir = self.path_for(user, home)
        name = self._names.make(len(data), wire_size(data))
        tmp_path = os.path.join(maildir, "tmp", name)
        new_path = os.path.join(maildir, "new", name)
        try:
            ensure_maildir(maildir)
            fd = os.open(tmp_path, _CREATE_MESSAGE, 0o600)
        except OSError as exc:
            raise store_error(exc) from None
        try:
            try:
                fsutil.write_all(fd, data)
                self._fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp_path, new_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise store_error(exc) from None
        try:
            fsutil.fsync_directory(os.path.join(maildir, "new"), self._fsync)
        except OSError as exc:
            # Not known to be durable, so the sender will retry: do not leave a duplicate.
            with contextlib.suppress(OSError):
                os.unlink(new_path)
            raise store_error(exc) from None
        return name

    async def deliver(self, user: str, data: bytes, home: str | None = None) -> str:
        return await asyncio.to_thread(self._deliver, user, data, home)
