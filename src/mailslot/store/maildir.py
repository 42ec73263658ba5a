"""The Maildir backend: one Maildir per user (cr.yp.to/proto/maildir.html), as Dovecot lays it out.

RFC 1939 section 3 and 8 ask for an exclusive lock and a stable snapshot for the session:
``open`` takes ``flock`` on ``<maildir>/.mailslot.lock`` (it conflicts even within one process
and vanishes with a dead process), finishes an interrupted deletion
(:mod:`mailslot.store.expunge`), moves new/ into cur/ as ``<base>:2,`` as Dovecot does, and lists
cur/ in delivery order.  Unique-ids (RFC 1939 section 7) and keys are derived from the immutable
base name only, so they survive the loss of every file of ours; with a ``uidl_format``, unique-ids
and order are Dovecot's instead, from ``dovecot-uidlist`` (:mod:`mailslot.store.dovecot`).
Messages sent whole by RETR are flagged seen (``S``) when the session ends, as Dovecot does,
unless ``flag_updates`` is off.  Sizes are RFC 1939 wire sizes:
``,W=`` in the name, else the size cache (:mod:`mailslot.store.sizecache`), else computed once.

Only regular files whose names do not start with ``.`` are ever listed or opened; symlinks,
FIFOs, directories and tmp/ are not.  Nothing below the template's fixed leading directories
is reached through a symlink, the Maildir, cur/, new/ and tmp/ included: every step is an
``openat`` relative to a directory descriptor (:mod:`mailslot.store.confine`), and a session
holds its Maildir's descriptor for its life.  Renames, fsyncs, writes and the scans of large
maildrops run in a worker thread, never on the event loop.  A small maildrop that needs none
of them (no journal, nothing in new/, at most :data:`INLINE_LIMIT` messages, every size known)
is opened on the loop: a handful of metadata calls on a directory that is in the page cache
cost less than the hop to a thread and back, which was a third of the server's CPU per login.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import os
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar, cast

from mailslot.log import escape
from mailslot.store import confine, expunge, fsutil, sizecache
from mailslot.store import dovecot as dovecot_compat
from mailslot.store.base import (
    MaildropLocked,
    MessageGone,
    MessageInfo,
    Owner,
    PartialDeletion,
    PermanentFailure,
    StoreError,
    TemporaryFailure,
)
from mailslot.store.dovecot import has_flag
from mailslot.store.fsutil import Fsync
from mailslot.store.maildirnames import UniqueNames, base_of, parse_bases, uids_of
from mailslot.store.wiresize import WireSizeCounter, wire_size

LOCK_FILE = ".mailslot.lock"
SIZE_CACHE = sizecache.NAME
READ_SIZE = 256 * 1024
HEADER_READ = 64 * 1024  # how much of a message is read for its X-UIDL header
# The most messages a maildrop may hold to be opened on the event loop (see above): one
# getdents batch and a few dozen microseconds of name parsing.
INLINE_LIMIT = 256
# Messages whose snapshot a store keeps for reuse (see Snapshots): some 60 MB at most.
SNAPSHOT_BUDGET = 200_000
# A directory whose times are at least this old when it is looked at cannot change later
# without its times changing too (see Snapshots).
SETTLED_NS = 1_000_000_000
_now = time.time_ns  # the clock inode times are set from (tests move it forward)

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


def _lock(maildir: int, wait: bool = False, owner: Owner | None = None) -> int:
    """Take the Maildir's lock; ``wait``: until it is free (blocking), else MaildropLocked."""
    fd = os.open(
        LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=maildir
    )
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MaildropLocked("maildrop is in use") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_or_close(maildir: int, shown: str, wait: bool = False, owner: Owner | None = None) -> int:
    """Take the lock of the Maildir ``maildir``; close ``maildir`` if that fails."""
    try:
        return _lock(maildir, wait, owner)
    except OSError as exc:
        os.close(maildir)
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink planted in its place
            raise PermanentFailure(
                f"maildir: {escape(os.path.join(shown, LOCK_FILE), 400)} is a symlink"
            ) from None
        raise store_error(exc) from None
    except BaseException:
        os.close(maildir)
        raise


def _subdirectories(
    maildir: int, shown: str, create: bool, owner: Owner | None = None
) -> tuple[int, int]:
    """Open new/ and cur/ and check tmp/: each must be a real directory, not a symlink.

    Returns the descriptors of new/ and cur/.  Raises
    :class:`~mailslot.store.confine.NotADirectory` naming the one that is not, or
    FileNotFoundError if one is missing and not ``create``.
    """
    new = confine.open_directory(maildir, "new", shown + "/new", create=create, owner=owner)
    try:
        cur = confine.open_directory(maildir, "cur", shown + "/cur", create=create, owner=owner)
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir("tmp", 0o700, dir_fd=maildir)
                    if owner is not None:
                        os.chown("tmp", *owner, dir_fd=maildir, follow_symlinks=False)
            confine.check_directory(maildir, "tmp", os.path.join(shown, "tmp"))
        except BaseException:
            os.close(cur)
            raise
    except BaseException:
        os.close(new)
        raise
    return new, cur


def _lstat_subdirectories(maildir: int, shown: str) -> tuple[os.stat_result, os.stat_result]:
    """new/'s and cur/'s lstat() after checking that all three are real directories.

    For a login that reuses its cached snapshot (:class:`Snapshots`): nothing is read
    through them, so their stamps are enough and opening them is not needed.  Raises as
    :func:`_subdirectories` does.
    """
    found = []
    for sub in ("new", "cur", "tmp"):
        st = os.stat(sub, dir_fd=maildir, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise confine.NotADirectory(os.path.join(shown, sub))
        found.append(st)
    return found[0], found[1]


def _measure(directory: int, name: str) -> tuple[int, int] | None:
    """Read a message once for its (physical, wire) sizes; None if it is gone or not regular."""
    try:
        fd = os.open(name, _OPEN_MESSAGE, dir_fd=directory)
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


def _scan(directory: int, limit: int | None = None) -> list[str]:
    """The names of regular, non-dot entries; with ``limit``, more of them (or none) is
    _WouldBlock.

    The type comes from the directory entry itself (d_type): no stat per name.  ``directory``
    is a descriptor (os.scandir works on a duplicate and rewinds it).
    """
    with os.scandir(directory) as entries:
        if limit is None:
            return [
                entry.name
                for entry in entries
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)
            ]
        found: list[str] = []
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                found.append(entry.name)
                if len(found) > limit:  # never list a large maildrop on the event loop
                    raise _WouldBlock
        return found


def _settle_new(new: int, cur: int, quick: bool) -> dict[str, str]:
    """Move new/ into cur/ as ``<base>:2,``; return base -> path of each file that stayed."""
    stayed: dict[str, str] = {}
    for name in _scan(new, 0 if quick else None):
        target = name if ":" in name else name + ":2,"
        # Never rename over a file of the same name: one of the two would be lost.
        if not fsutil.lexists(cur, target):
            try:
                os.rename(name, target, src_dir_fd=new, dst_dir_fd=cur)
                continue
            except FileNotFoundError:
                continue
            except OSError:
                pass
        base = base_of(name)
        relative = "new/" + name
        previous = stayed.get(base)
        if previous is None or relative < previous:
            stayed[base] = relative
    return stayed


# new/'s and cur/'s inode, mtime and ctime (ns). Kept with every cached snapshot, one per
# maildrop recently opened (idle sessions' included): 81 bytes, where a tuple of two tuples of
# three ints took some 390.
_STAMPS = struct.Struct("<QqqQqq")


def _settled_stamps(new: int, cur: int, now: int) -> bytes | None:
    """new/'s and cur/'s stamps, packed, if both are a second old or more at ``now``; else None.

    Younger times prove nothing (see :class:`Snapshots`).
    """
    return _stamps_of(os.fstat(new), os.fstat(cur), now)


def _stamps_of(new: os.stat_result, cur: os.stat_result, now: int) -> bytes | None:
    fields: list[int] = []
    for st in (new, cur):
        if now - max(st.st_mtime_ns, st.st_ctime_ns) < SETTLED_NS:
            return None
        fields += (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    return _STAMPS.pack(*fields)


class Snapshots:
    """The last snapshot of recently opened maildrops, reused while cur/ lists the same names.

    When new/ holds nothing to move and every name carries ``,W=``, a snapshot is a function
    of the names cur/ lists alone, so a later open that lists exactly the same names (in the
    same directory order) can reuse it instead of parsing, sorting and building 100,000
    objects again.  MessageInfo is immutable and shared, and so are the locations: a
    session whose message moved makes itself a new dict (a copy at every login took some
    3 ms for 100,000 locations, and a dict per idle session).

    A snapshot also keeps the inode, mtime and ctime that new/ and cur/ had just before they
    were listed (packed: :func:`_settled_stamps`).  If both were a second old or more then,
    a later open that finds the same values reuses the snapshot without listing either
    directory: adding, removing or renaming an entry sets a directory's mtime and ctime to
    the current time, and the kernel's clock for inode times is coarse (a few milliseconds),
    never a second.  Younger times prove nothing (a second change within the same tick
    leaves them as they were), so those maildrops are listed at every open, as Dovecot
    treats a maildir changed within the last second as dirty.  Only a program that sets a
    directory's times back by hand (``touch -d``) can hide a change, until the next change
    or ``snapshot_cache = 0``.

    ``budget`` bounds what is kept, in messages (plus one per maildrop; a message costs some
    300 bytes while no session has its maildrop open); the least recently used go first.
    """

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._held = 0
        self._entries: OrderedDict[str, _Snapshot] = OrderedDict()
        self._lock = threading.Lock()  # opens run on the loop and in worker threads

    def get(self, maildir: str, names: list[str], uidlist: object = None) -> _Snapshot | None:
        with self._lock:
            snapshot = self._entries.get(maildir)
            if snapshot is None or snapshot.uidlist != uidlist:
                return None
            self._entries.move_to_end(maildir)
        return snapshot if snapshot.listing() == names else None

    def unchanged(self, maildir: str, stamps: bytes, uidlist: object = None) -> _Snapshot | None:
        """The snapshot of a maildrop whose new/ and cur/ settled and did not change since.

        ``uidlist`` is what else the snapshot was made from (``dovecot-uidlist``'s stamps).
        """
        with self._lock:
            snapshot = self._entries.get(maildir)
            if (
                snapshot is None
                or snapshot.stamps is None
                or snapshot.stamps != stamps
                or snapshot.uidlist != uidlist
            ):
                return None
            self._entries.move_to_end(maildir)
            return snapshot

    def put(self, maildir: str, snapshot: _Snapshot) -> None:
        with self._lock:
            previous = self._entries.pop(maildir, None)
            if previous is not None:
                self._held -= previous.count() + 1
            if snapshot.count() + 1 > self._budget:
                return
            self._entries[maildir] = snapshot
            self._held += snapshot.count() + 1
            while self._held > self._budget:
                _, dropped = self._entries.popitem(last=False)
                self._held -= dropped.count() + 1


@dataclass(frozen=True, slots=True)
class _Snapshot:
    # As cur/ listed them, or None when that is the locations' values in order (no two
    # names of one base): a list the size of the maildrop saved, as long as it is cached.
    names: list[str] | None
    messages: tuple[MessageInfo, ...]
    locations: dict[str, str]  # shared with the sessions: never changed in place
    stamps: bytes | None = None  # of new/ and cur/, if settled (_settled_stamps)
    uidlist: object = None  # dovecot-uidlist's stamps, when the snapshot was made from it

    def count(self) -> int:
        """How many names cur/ listed."""
        return len(self.locations if self.names is None else self.names)

    def listing(self) -> list[str]:
        """The names cur/ listed, in the order it listed them."""
        return list(self.locations.values()) if self.names is None else self.names


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a large snapshot's MessageInfo are built.

    A snapshot of 100,000 messages allocates as many objects that all survive and form no
    cycle; every 700 of them would otherwise trigger a collection, and some of those traverse
    the whole heap (every other session's snapshot too): a sixth of the CPU of a large
    snapshot.  No I/O happens meanwhile.  Snapshots in several threads share one pause; the
    collector's state from before the first is restored after the last.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def take_snapshot(
    path: str,
    maildir: int,
    new: int,
    cur: int,
    *,
    limit: int | None = None,
    snapshots: Snapshots | None = None,
    dovecot: dovecot_compat.Compat | None = None,
) -> tuple[tuple[MessageInfo, ...], dict[str, str]]:
    """List the maildrop: messages in delivery order and where each key's file is.

    ``maildir``, ``new`` and ``cur`` are the descriptors of the Maildir and of its new/ and
    cur/ (opened without following symlinks: :mod:`mailslot.store.confine`); ``path`` names it
    in the snapshot cache.

    The locations map a key to its file name in cur/, or to ``new/<name>`` for a file that
    could not be moved (see :func:`relative_path`).  With ``snapshots`` they are shared with
    the cache and with later opens: never change them in place.

    This runs at every login on maildrops of 100,000 messages, hence one pass over cur/ (new/
    is usually empty), no stat and no read for names that carry ``,W=``, and per message only
    C-level passes over all names at once (:func:`~mailslot.store.maildirnames.parse_bases`
    reads times, sizes and whether every name is its own unique-id; then one sort on float
    keys).  No DirEntry and no string beyond the names outlives the scan.  With
    ``snapshots``, an unchanged listing reuses the last snapshot, and settled, unchanged
    directories are not listed at all (see :class:`Snapshots`).
    With ``limit`` it only reads (a quick snapshot for the event loop) and raises
    :class:`_WouldBlock` instead of renaming, measuring, rewriting the size cache or listing
    more than ``limit`` messages.

    With ``dovecot``, messages are in ``dovecot-uidlist`` order and their unique-ids are
    Dovecot's (:mod:`mailslot.store.dovecot`); a cached snapshot is reused only while the
    uidlist is unchanged too.
    """
    quick = limit is not None
    stamps: bytes | None = None
    made_from = None if dovecot is None else dovecot.key(maildir)
    if snapshots is not None:
        # Taken before listing: a change made after this is seen by the next open.  Stamps
        # that match a snapshot's are settled too: a change would have made them younger.
        stamps = _settled_stamps(new, cur, _now())
        known = None if stamps is None else snapshots.unchanged(path, stamps, made_from)
        if known is not None:
            return known.messages, known.locations
    stayed = _settle_new(new, cur, quick)
    names = _scan(cur, limit)
    if snapshots is not None and not stayed:
        known = snapshots.get(path, names, made_from)
        if known is not None:
            if fsutil.lexists(maildir, SIZE_CACHE):  # as below: every size came from a name
                _update_cache(maildir, sizecache.load(maildir, SIZE_CACHE), [], {}, quick)
            if stamps is not None:
                snapshots.put(path, replace(known, stamps=stamps))
            return known.messages, known.locations

    bases = [name.partition(":")[0] for name in names]
    locations = dict(zip(bases, names, strict=True))
    if len(locations) != len(names):
        # Two files with one base (flags set twice): serve one, stably (the least name).
        for base, name in sorted(zip(bases, names, strict=True), reverse=True):
            locations[base] = name
        bases = list(locations)
    if stayed:
        # A copy left in new/ is served only if cur/ has no file of that base.
        for base, relative in stayed.items():
            if base not in locations:
                locations[base] = relative
                bases.append(base)

    orders, sizes, plain = parse_bases(bases)
    named = None not in sizes
    if not named:
        _fill_sizes(maildir, new, cur, bases, sizes, locations, quick)
    elif fsutil.lexists(maildir, SIZE_CACHE):
        # No message needed the cache now; empty it of entries for messages now gone.
        _update_cache(maildir, sizecache.load(maildir, SIZE_CACHE), [], {}, quick)

    if dovecot is not None:
        messages, made_from = _dovecot_messages(
            dovecot, path, maildir, new, cur, bases, sizes, locations, quick
        )
    else:
        messages = _delivery_order(bases, orders, sizes, plain)
    if snapshots is not None and named and not stayed:
        # Without a copy left in new/ and with one name per base, the locations were built
        # from the names in listing order and hold nothing else (see _Snapshot.names).
        listed = None if len(locations) == len(names) else names
        snapshots.put(path, _Snapshot(listed, messages, locations, stamps, made_from))
    return messages, locations


def _delivery_order(
    bases: list[str], orders: list[float], sizes: list[int | None], plain: bool
) -> tuple[MessageInfo, ...]:
    """The snapshot in delivery order, unique-ids from the base names (maildirnames)."""
    # Delivery order: the float alone (a fast sort) unless two messages share it.
    if len(set(orders)) == len(orders):
        index = sorted(range(len(bases)), key=orders.__getitem__)
    else:
        index = sorted(range(len(bases)), key=lambda i: (orders[i], bases[i]))
    with _gc_paused() if len(bases) > INLINE_LIMIT else contextlib.nullcontext():
        if plain and None not in sizes:
            # Every key is its own uid: build in directory order, then put in delivery order.
            infos = list(map(MessageInfo, bases, bases, cast(list[int], sizes)))
            return tuple(map(infos.__getitem__, index))
        # A message that vanished while it was measured has no size and is not listed.
        keys = [bases[i] for i in index if sizes[i] is not None]
        wires = [size for i in index if (size := sizes[i]) is not None]
        return tuple(map(MessageInfo, keys, uids_of(keys), wires))


def _dovecot_messages(
    dovecot: dovecot_compat.Compat,
    path: str,
    maildir: int,
    new: int,
    cur: int,
    bases: list[str],
    sizes: list[int | None],
    locations: dict[str, str],
    quick: bool,
) -> tuple[tuple[MessageInfo, ...], object]:
    """The snapshot in Dovecot's order with Dovecot's unique-ids, and the uidlist's stamps."""
    # A message that vanished while it was measured has no size and is not listed.
    letter = dovecot.hidden(maildir)
    if letter is not None:
        # Hidden instead of deleted (pop3_deleted_flag): never listed again.
        sizes = [
            None if size is None or has_flag(locations[base], letter) else size
            for base, size in zip(bases, sizes, strict=True)
        ]
    if None in sizes:
        listed = [base for base, size in zip(bases, sizes, strict=True) if size is not None]
        wires = [size for size in sizes if size is not None]
    else:
        listed, wires = bases, cast(list[int], sizes)

    def header(base: str) -> bytes | None:
        directory, name = _where(new, cur, locations[base])
        try:
            fd = os.open(name, _OPEN_MESSAGE, dir_fd=directory)
        except OSError:
            return None
        try:
            return os.read(fd, HEADER_READ) if stat.S_ISREG(os.fstat(fd).st_mode) else None
        finally:
            os.close(fd)

    try:
        index, keys, uids, made_from = dovecot.view(path, maildir, listed, header, quick)
    except dovecot_compat.NeedsThread:
        raise _WouldBlock from None
    except OSError as exc:
        raise store_error(exc) from None
    with _gc_paused() if len(listed) > INLINE_LIMIT else contextlib.nullcontext():
        messages = tuple(map(MessageInfo, keys, uids, map(wires.__getitem__, index)))
    return messages, made_from


def relative_path(location: str) -> str:
    """The path, relative to the maildir, of a location from :func:`take_snapshot`.

    A file in cur/ (nearly all) is stored as its bare name, which saves building 100,000
    strings at each login; a name cannot hold "/", so ``new/<name>`` is unambiguous.
    """
    return location if "/" in location else "cur/" + location


def _where(new: int, cur: int, location: str) -> tuple[int, str]:
    """The directory descriptor and name of a location from :func:`take_snapshot`."""
    sub, _, name = location.rpartition("/")
    return (new if sub else cur), name


def _fill_sizes(
    maildir: int,
    new: int,
    cur: int,
    keys: list[str],
    sizes: list[int | None],
    locations: dict[str, str],
    quick: bool,
) -> None:
    """Fill in the sizes of names without ``,W=`` from the cache, else by reading the file.

    A message that is gone (or no longer a regular file) keeps None: it is not listed.
    """
    old_cache = sizecache.load(maildir, SIZE_CACHE)
    cache_hits: list[str] = []
    measured: sizecache.CacheEntries = {}
    for i, base in enumerate(keys):
        if sizes[i] is not None:
            continue
        directory, name = _where(new, cur, locations[base])
        try:
            st = os.stat(name, dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        cached = old_cache.get(base)
        if cached is not None and cached[0] == st.st_size:
            sizes[i] = cached[1]
            cache_hits.append(base)
            continue
        if quick:
            raise _WouldBlock
        found = _measure(directory, name)
        if found is None:
            continue
        sizes[i] = found[1]
        if sizecache.cacheable(base):
            measured[base] = found
    _update_cache(maildir, old_cache, cache_hits, measured, quick)


def _update_cache(
    maildir: int,
    old_cache: sizecache.CacheEntries,
    cache_hits: list[str],
    measured: sizecache.CacheEntries,
    quick: bool,
) -> None:
    """Rewrite the size cache if something was measured or some entry's message is gone."""
    if measured or len(cache_hits) != len(old_cache):
        if quick:
            raise _WouldBlock
        fresh = {base: old_cache[base] for base in cache_hits}
        fresh.update(measured)
        # The cache only saves time: a full disk must not stop the login.
        with contextlib.suppress(OSError):
            sizecache.save(maildir, fresh, SIZE_CACHE)


async def _in_thread(
    function: Callable[[], _T],
    cleanup: Callable[[_T], None],
    release: Callable[[], None] | None = None,
) -> _T:
    """Run ``function`` in a worker thread; if the caller is cancelled, ``cleanup`` its result.

    A worker thread cannot be interrupted, so a cancelled open() would otherwise leave its
    lock held by an object nobody has.  Whichever side comes second (the worker finishing
    or the caller giving up) does the cleanup, under one lock.  If the caller gives up before
    a worker started ``function`` (all were busy), it never runs and ``release`` frees what
    it was handed instead (the lock and Maildir descriptors of a quick open that fell through).
    """
    guard = threading.Lock()
    abandoned = False
    started = False
    results: list[_T] = []

    def work() -> _T:
        nonlocal started
        with guard:
            if abandoned:  # nobody waits for it, and release() already ran
                raise asyncio.CancelledError
            started = True
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
            never_ran = not started
            for result in results:
                cleanup(result)
        if never_ran and release is not None:
            release()
        raise


class MaildirMaildrop:
    """One locked Maildir, open for one POP3 session.

    It holds the descriptor of its Maildir directory, opened without following symlinks
    (:mod:`mailslot.store.confine`), and reaches cur/, new/ and the files in them only
    through it: a directory swapped for a symlink during the session is refused, never
    followed.
    """

    # One per logged-in session, idle ones included: no per-instance __dict__.
    __slots__ = (
        "_flag_updates",
        "_fsync",
        "_hide",
        "_locations",
        "_lock_fd",
        "_maildir_fd",
        "_messages",
        "_path",
        "_seen",
        "_shared",
    )

    def __init__(
        self,
        path: str,
        maildir_fd: int,
        lock_fd: int,
        messages: Sequence[MessageInfo],
        locations: dict[str, str],
        fsync: Fsync,
        flag_updates: bool = True,
        hide: Callable[[int], str] | None = None,
        shared: bool = False,
    ) -> None:
        """``shared`` (``[store] lock_session = false``): the lock, held while the snapshot
        was taken, is released now and taken again only for the commit and the flags."""
        self._path = path
        self._maildir_fd = maildir_fd
        self._lock_fd: int | None = lock_fd
        self._messages = tuple(messages)
        self._locations = locations
        self._fsync = fsync
        self._flag_updates = flag_updates
        self._hide = hide  # the flag letter to hide with instead of deleting, if set
        self._seen: dict[str, None] | None = None  # keys retrieved with RETR, in order
        self._shared = shared
        if shared:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    @property
    def path(self) -> str:
        return self._path

    @property
    def messages(self) -> Sequence[MessageInfo]:
        return self._messages

    def _subdirectory(self, sub: str) -> int:
        return confine.open_directory(self._maildir_fd, sub, f"{self._path}/{sub}")

    def _open_at(self, relative: str) -> int | None:
        """Open a message file safely; None if it is gone or is not a regular file."""
        sub, _, name = relative.rpartition("/")
        try:
            directory = self._subdirectory(sub)
        except OSError as exc:
            raise store_error(exc) from None
        try:
            fd = os.open(name, _OPEN_MESSAGE, dir_fd=directory)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink: never follow it
                raise MessageGone("message is no longer a regular file") from None
            raise store_error(exc) from None
        finally:
            os.close(directory)
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
                directory = self._subdirectory(sub)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise store_error(exc) from None
            try:
                names = os.listdir(directory)
            except OSError as exc:
                raise store_error(exc) from None
            finally:
                os.close(directory)
            for name in names:
                if not name.startswith(".") and base_of(name) == key:
                    return f"{sub}/{name}"
        return None

    async def read(self, message: MessageInfo, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        if self._lock_fd is None:
            raise TemporaryFailure("maildrop is closed")
        location = self._locations.get(message.key)
        if location is None:
            raise MessageGone("message is not in this maildrop")
        fd = self._open_at(relative_path(location))
        if fd is None:
            moved = await asyncio.to_thread(self._relocate, message.key)
            fd = None if moved is None else self._open_at(moved)
            if moved is None or fd is None:
                raise MessageGone("message has been removed")
            # A new dict, not a change in place: the snapshot cache and other sessions of
            # this maildrop share the old one.  Files move during a session only rarely.
            self._locations = {**self._locations, message.key: moved}
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
        """Journal, then unlink (see :mod:`mailslot.store.expunge`); say how far it got."""
        journaled = True
        try:
            expunge.write(self._maildir_fd, keys, self._fsync)
        except OSError as exc:
            if exc.errno not in expunge.NO_SPACE:
                raise store_error(exc) from None
            journaled = False  # a full disk: remove without a journal, in order
        known = {key: relative_path(self._locations[key]) for key in keys}
        try:
            progress = expunge.remove(
                self._maildir_fd, keys, self._fsync, known, journaled=journaled
            )
        except (OSError, StoreError) as exc:
            # cur/ or new/ could not be opened: nothing was unlinked here.
            error = store_error(exc) if isinstance(exc, OSError) else exc
            if not journaled:
                raise error from None
            raise PartialDeletion(f"{error}", deleted=0, pending=True) from None
        if progress.failed or not progress.durable:
            what = "removal not durable" if not progress.failed else "unlink failed"
            raise PartialDeletion(
                f"maildir: {what}: {progress.error}"
                + ("" if journaled else " (no room for the journal)"),
                deleted=progress.deleted,
                pending=journaled,
            )

    def retrieved(self, message: MessageInfo) -> None:
        """RETR sent ``message`` whole: flag it seen when the session ends (not for TOP).

        Dovecot's POP3 server does the same unless ``pop3_no_flag_updates``; IMAP and
        webmail users then see POP3-downloaded mail as read.
        """
        if self._flag_updates and message.key in self._locations:
            if self._seen is None:
                self._seen = {}
            self._seen[message.key] = None

    def forget_retrieved(self) -> None:
        """RSET: what was retrieved so far is not flagged seen, as Dovecot's RSET (its
        ``cmd_rset`` clears the session's pending ``\\Seen`` changes)."""
        self._seen = None

    def _take_seen(self, deleted: Sequence[str] = ()) -> list[str]:
        seen, self._seen = self._seen, None
        if not seen:
            return []
        gone = set(deleted)  # a deleted message is not worth a rename (Dovecot skips it too)
        return [key for key in seen if key not in gone]

    def _add_flag(self, cur: int, key: str, letter: str, *, from_new: bool) -> str | None:
        """Rename ``key``'s file to carry the flag ``letter`` (flags kept sorted); return
        its name in cur/, or None if it is gone (or in new/, unless ``from_new``).

        The base name, and so the key and the unique-id, never changes.  A file renamed by
        another program meanwhile is looked up again by its base, as :meth:`read` does.
        Raises OSError (other than a vanished file) and :class:`StoreError`.
        """
        location = self._locations.get(key)
        for _ in range(2):
            if location is None:
                return None
            sub, _, name = relative_path(location).rpartition("/")
            if sub != "cur" and not from_new:
                return None
            target = dovecot_compat.with_flag(name, letter)
            if sub == "cur" and (target == name or fsutil.lexists(cur, target)):
                return target  # flagged already (by another program, maybe)
            source = cur if sub == "cur" else self._subdirectory(sub)
            try:
                os.rename(name, target, src_dir_fd=source, dst_dir_fd=cur)
                return target
            except FileNotFoundError:
                location = self._relocate(key)
            finally:
                if source != cur:
                    os.close(source)
        return None

    def _flag_seen(self, keys: list[str]) -> None:
        """Flag ``keys`` seen (``S``) in cur/; best effort: a flag is not worth an error."""
        try:
            cur = self._subdirectory("cur")
        except OSError:
            return
        moved: dict[str, str] = {}
        try:
            for key in keys:
                try:
                    name = self._add_flag(cur, key, "S", from_new=False)
                except (OSError, StoreError):
                    continue
                if name is not None:
                    moved[key] = name
        finally:
            os.close(cur)
        if moved:
            # A new dict: the snapshot cache and other sessions share the old one.
            self._locations = {**self._locations, **moved}

    def _hide_messages(self, keys: list[str], hide: Callable[[int], str]) -> None:
        """Flag ``keys`` with the hiding keyword instead of removing them (Dovecot's
        ``pop3_deleted_flag``); say how far it got as :meth:`_delete` does.

        A file still in new/ moves to cur/ with the flag.  The renames are made durable
        before QUIT's +OK, as a removal would be.
        """
        try:
            letter = hide(self._maildir_fd)
            cur = self._subdirectory("cur")
        except OSError as exc:
            raise store_error(exc) from None
        done = 0
        error: OSError | None = None
        moved: dict[str, str] = {}
        try:
            for key in keys:
                try:
                    name = self._add_flag(cur, key, letter, from_new=True)
                except OSError as exc:
                    error = exc
                    break
                done += 1  # a file removed meanwhile is hidden all the same
                if name is not None:
                    moved[key] = name
            if moved:
                try:
                    self._fsync(cur)
                except OSError as exc:  # hidden, maybe not for good: say so
                    error = exc
        finally:
            os.close(cur)
            if moved:
                self._locations = {**self._locations, **moved}
        if error is None:
            return
        if not done:
            raise store_error(error) from None
        raise PartialDeletion(f"{store_error(error)} (hiding)", deleted=done, pending=False)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """A shared session's commit holds the lock, as Dovecot's pop3_lock_session = no
        still locks the mailbox to expunge: one session's journal and removals at a time."""
        if not self._shared or self._lock_fd is None:
            yield
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # blocking: another commit takes moments
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _commit(self, keys: list[str], seen: list[str]) -> None:
        with self._locked():
            self._commit_locked(keys, seen)

    def _flag_seen_locked(self, keys: list[str]) -> None:
        with self._locked():
            self._flag_seen(keys)

    def _commit_locked(self, keys: list[str], seen: list[str]) -> None:
        try:
            if keys and self._hide is not None:
                self._hide_messages(keys, self._hide)
            elif keys:
                self._delete(keys)
        finally:
            if seen:
                self._flag_seen(seen)

    async def delete(self, messages: Sequence[MessageInfo]) -> None:
        if self._lock_fd is None:
            raise TemporaryFailure("maildrop is closed")
        # Only keys of this snapshot: a stray MessageInfo must never remove another file.
        keys = list(dict.fromkeys(m.key for m in messages if m.key in self._locations))
        seen = self._take_seen(keys)
        if keys or seen:
            await asyncio.to_thread(self._commit, keys, seen)

    def close_now(self) -> None:
        """Release the lock without awaiting (for cleanup paths). Idempotent."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)
            os.close(self._maildir_fd)

    async def close(self) -> None:
        # A session that ends without QUIT still flags what it retrieved, as Dovecot does.
        seen = self._take_seen() if self._lock_fd is not None else []
        try:
            if seen:
                await asyncio.to_thread(self._flag_seen_locked, seen)
        finally:
            self.close_now()


class MaildirStore:
    """Maildrops at ``template`` (``{user}``, ``{localpart}``, ``{domain}``, ``{home}``, ``~/``).

    Everything below the template's fixed leading directories is reached without following
    symlinks (:mod:`mailslot.store.confine`).  ``fsync`` is the one call that makes data
    durable; tests inject a failing one to play a full disk.  ``snapshot_budget`` is how many
    messages' snapshots are kept for reuse by the next open of an unchanged maildrop
    (:class:`Snapshots`); 0 keeps none.

    With ``uidl_format`` (Dovecot's ``pop3_uidl_format``), unique-ids and message order come
    from ``dovecot-uidlist`` as Dovecot's POP3 server has them (:mod:`mailslot.store.dovecot`);
    ``reuse_xuidl`` is ``pop3_reuse_xuidl``.  With ``flag_updates`` a message retrieved with
    RETR is flagged seen (``S``) when the session ends, as Dovecot does unless
    ``pop3_no_flag_updates``.  ``lock_session = False`` is Dovecot's ``pop3_lock_session = no``:
    the lock is held only to take a snapshot and to commit, so sessions of one maildrop
    run side by side (docs/configuration.md has the trade-offs).
    """

    def __init__(
        self,
        template: str,
        *,
        fsync: Fsync = os.fsync,
        hostname: str | None = None,
        snapshot_budget: int = SNAPSHOT_BUDGET,
        uidl_format: str | None = None,
        reuse_xuidl: bool = False,
        flag_updates: bool = True,
        deleted_flag: str | None = None,
        lock_session: bool = True,
    ) -> None:
        self._template = template
        self._shared = not lock_session
        self._dovecot = (
            None
            if uidl_format is None
            else dovecot_compat.Compat(
                uidl_format, fsync=fsync, reuse_xuidl=reuse_xuidl, deleted_flag=deleted_flag
            )
        )
        self._flag_updates = flag_updates
        self._hide = None if deleted_flag is None else self._dovecot_hide_letter
        self._root = confine.root_of(template)
        self._fsync = fsync
        self._names = UniqueNames(hostname)
        self._snapshots = Snapshots(snapshot_budget) if snapshot_budget > 0 else None

    def _dovecot_hide_letter(self, maildir: int) -> str:
        assert self._dovecot is not None
        return self._dovecot.hide_letter(maildir)

    def path_for(self, user: str, home: str | None = None) -> str:
        """The Maildir directory of ``user`` (raises :class:`PermanentFailure` if unsafe).

        For logs and tests: the store itself never opens this path as a whole.
        """
        return self.location_for(user, home).path

    def location_for(self, user: str, home: str | None = None) -> confine.Location:
        """Where ``user``'s Maildir is: the root and the components to walk below it."""
        return confine.locate(self._template, user, home, self._root)

    def maildir_directory(self, user: str, home: str | None = None) -> int:
        """A descriptor of ``user``'s Maildir, walked without symlinks (blocking).

        Raises FileNotFoundError if it does not exist yet, a :class:`StoreError` otherwise.
        """
        try:
            return confine.open_maildir(self.location_for(user, home))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise store_error(exc) from None

    def _open(
        self,
        location: confine.Location,
        held: tuple[int, int] | None,
        owner: Owner | None = None,
    ) -> MaildirMaildrop:
        if held is None:
            try:
                maildir_fd = confine.open_maildir(location, create=True, owner=owner)
            except OSError as exc:
                raise store_error(exc) from None
            held = (
                maildir_fd,
                _lock_or_close(maildir_fd, location.path, wait=self._shared, owner=owner),
            )
        maildir_fd, lock_fd = held
        try:
            new, cur = _subdirectories(maildir_fd, location.path, create=True, owner=owner)
            try:
                expunge.recover(maildir_fd, self._fsync)
                messages, locations = take_snapshot(
                    location.path,
                    maildir_fd,
                    new,
                    cur,
                    snapshots=self._snapshots,
                    dovecot=self._dovecot,
                )
            finally:
                os.close(new)
                os.close(cur)
        except OSError as exc:
            _close(lock_fd, maildir_fd)
            raise store_error(exc) from None
        except BaseException:
            _close(lock_fd, maildir_fd)
            raise
        return self._maildrop(location, maildir_fd, lock_fd, messages, locations)

    def _maildrop(
        self,
        location: confine.Location,
        maildir_fd: int,
        lock_fd: int,
        messages: Sequence[MessageInfo],
        locations: dict[str, str],
    ) -> MaildirMaildrop:
        return MaildirMaildrop(
            location.path,
            maildir_fd,
            lock_fd,
            messages,
            locations,
            self._fsync,
            self._flag_updates,
            self._hide,
            self._shared,
        )

    def _open_quick(
        self, location: confine.Location, maildir_fd: int, lock_fd: int
    ) -> MaildirMaildrop | None:
        """Open a small maildrop without blocking work (see the module docstring), or None.

        On None the descriptors stay open for the worker thread.
        """
        try:
            # An interrupted deletion is finished in the thread.  A journal's temporary file
            # alone (a crash before the rename) deletes nothing, so it does not stop a quick
            # open: the thread's recover() or the next journal write removes it.
            if fsutil.lexists(maildir_fd, expunge.JOURNAL):
                return None
            try:
                new_st, cur_st = _lstat_subdirectories(maildir_fd, location.path)
                if self._snapshots is not None:
                    stamps = _stamps_of(new_st, cur_st, _now())
                    made_from = None if self._dovecot is None else self._dovecot.key(maildir_fd)
                    known = (
                        None
                        if stamps is None
                        else self._snapshots.unchanged(location.path, stamps, made_from)
                    )
                    if known is not None:
                        return MaildirMaildrop(
                            location.path,
                            maildir_fd,
                            lock_fd,
                            known.messages,
                            known.locations,
                            self._fsync,
                            self._flag_updates,
                            self._hide,
                            self._shared,
                        )
                new, cur = _subdirectories(maildir_fd, location.path, create=False)
            except FileNotFoundError:
                return None  # the thread creates it
            try:
                messages, locations = take_snapshot(
                    location.path,
                    maildir_fd,
                    new,
                    cur,
                    limit=INLINE_LIMIT,
                    snapshots=self._snapshots,
                    dovecot=self._dovecot,
                )
            finally:
                os.close(new)
                os.close(cur)
        except _WouldBlock:
            return None
        except OSError as exc:
            _close(lock_fd, maildir_fd)
            raise store_error(exc) from None
        except BaseException:
            _close(lock_fd, maildir_fd)
            raise
        return self._maildrop(location, maildir_fd, lock_fd, messages, locations)

    async def open(
        self, user: str, home: str | None = None, *, owner: Owner | None = None
    ) -> MaildirMaildrop:
        location = self.location_for(user, home)
        owner = _as_root(owner)
        held: tuple[int, int] | None = None
        try:
            maildir_fd = confine.open_maildir(location)
        except FileNotFoundError:
            pass  # a new user: the worker thread creates the Maildir, then locks it
        except OSError as exc:
            raise store_error(exc) from None
        else:
            try:
                lock_fd = _lock_or_close(maildir_fd, location.path, owner=owner)
            except MaildropLocked:
                if not self._shared:
                    raise
                # Another session's open or commit holds it for moments: wait in the thread.
            else:
                maildrop = self._open_quick(location, maildir_fd, lock_fd)
                if maildrop is not None:
                    return maildrop
                held = maildir_fd, lock_fd

        def release() -> None:
            if held is not None:
                os.close(held[1])
                os.close(held[0])

        return await _in_thread(
            lambda: self._open(location, held, owner), MaildirMaildrop.close_now, release
        )

    def _deliver(self, user: str, data: bytes, home: str | None, owner: Owner | None) -> str:
        location = self.location_for(user, home)
        name = self._names.make(len(data), wire_size(data))
        try:
            maildir_fd = confine.open_maildir(location, create=True, owner=owner)
            try:
                new, cur = _subdirectories(maildir_fd, location.path, create=True, owner=owner)
                os.close(cur)
                try:
                    shown = os.path.join(location.path, "tmp")
                    tmp = confine.open_directory(maildir_fd, "tmp", shown)
                except BaseException:
                    os.close(new)
                    raise
            finally:
                os.close(maildir_fd)
        except OSError as exc:
            raise store_error(exc) from None
        try:
            self._write_message(tmp, new, name, data, owner)
        finally:
            os.close(tmp)
            os.close(new)
        return name

    def _write_message(
        self, tmp: int, new: int, name: str, data: bytes, owner: Owner | None = None
    ) -> None:
        """Write into tmp/, fsync, rename into new/, fsync new/ (the Maildir protocol).

        ``owner``: the message's (uid, gid), set before anything is written into it."""
        try:
            fd = os.open(name, _CREATE_MESSAGE, 0o600, dir_fd=tmp)
        except OSError as exc:
            raise store_error(exc) from None
        try:
            try:
                if owner is not None:
                    os.fchown(fd, *owner)
                fsutil.write_all(fd, data)
                self._fsync(fd)
            finally:
                os.close(fd)
            os.rename(name, name, src_dir_fd=tmp, dst_dir_fd=new)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=tmp)
            raise store_error(exc) from None
        try:
            self._fsync(new)
        except OSError as exc:
            # Not known to be durable, so the sender will retry: do not leave a duplicate.
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=new)
            raise store_error(exc) from None

    async def deliver(
        self, user: str, data: bytes, home: str | None = None, *, owner: Owner | None = None
    ) -> str:
        return await asyncio.to_thread(self._deliver, user, data, home, _as_root(owner))


def _as_root(owner: Owner | None) -> Owner | None:
    """The owner to give new files: only a process running as root can give them away."""
    return owner if owner is not None and os.geteuid() == 0 else None


def _close(*fds: int) -> None:
    """Close the descriptors an open took, when it fails."""
    for fd in fds:
        os.close(fd)
