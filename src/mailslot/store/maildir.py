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
from mailslot.store.maildirnames import UniqueNames, base_of, parse_bases, uids_of
from mailslot.store.paths import expand
from mailslot.store.wiresize import WireSizeCounter, wire_size

LOCK_FILE = ".mailslot.lock"
SIZE_CACHE = ".mailslot-sizes"
READ_SIZE = 256 * 1024
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
        maildir + "/" + LOCK_FILE,
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


def _scan(directory: str, limit: int | None = None) -> list[str]:
    """The names of regular, non-dot entries; with ``limit``, more of them (or none) is
    _WouldBlock.

    The type comes from the directory entry itself (d_type): no stat per name.
    """
    try:
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
    except FileNotFoundError:
        if limit is not None:  # the thread's ensure_maildir() creates it
            raise _WouldBlock from None
        return []


def _settle_new(maildir: str, quick: bool) -> dict[str, str]:
    """Move new/ into cur/ as ``<base>:2,``; return base -> path of each file that stayed."""
    new_dir = maildir + "/new"
    cur_dir = maildir + "/cur"
    stayed: dict[str, str] = {}
    for name in _scan(new_dir, 0 if quick else None):
        target = name if ":" in name else name + ":2,"
        target_path = f"{cur_dir}/{target}"
        # Never rename over a file of the same name: one of the two would be lost.
        if not fsutil.lexists(target_path):
            try:
                os.rename(f"{new_dir}/{name}", target_path)
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


def _settled_stamps(maildir: str, now: int) -> bytes | None:
    """new/'s and cur/'s stamps, packed, if both are a second old or more at ``now``; else None.

    Younger times prove nothing (see :class:`Snapshots`), and a directory that cannot be
    stat'ed has none.
    """
    fields: list[int] = []
    for sub in ("/new", "/cur"):
        try:
            st = os.stat(maildir + sub)
        except OSError:
            return None
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

    def get(self, maildir: str, names: list[str]) -> _Snapshot | None:
        with self._lock:
            snapshot = self._entries.get(maildir)
            if snapshot is None:
                return None
            self._entries.move_to_end(maildir)
        return snapshot if snapshot.listing() == names else None

    def unchanged(self, maildir: str, stamps: bytes) -> _Snapshot | None:
        """The snapshot of a maildrop whose new/ and cur/ settled and did not change since."""
        with self._lock:
            snapshot = self._entries.get(maildir)
            if snapshot is None or snapshot.stamps is None or snapshot.stamps != stamps:
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
    maildir: str, *, limit: int | None = None, snapshots: Snapshots | None = None
) -> tuple[tuple[MessageInfo, ...], dict[str, str]]:
    """List the maildrop: messages in delivery order and where each key's file is.

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
    """
    quick = limit is not None
    stamps: bytes | None = None
    if snapshots is not None:
        # Taken before listing: a change made after this is seen by the next open.  Stamps
        # that match a snapshot's are settled too: a change would have made them younger.
        stamps = _settled_stamps(maildir, _now())
        known = None if stamps is None else snapshots.unchanged(maildir, stamps)
        if known is not None:
            return known.messages, known.locations
    stayed = _settle_new(maildir, quick)
    names = _scan(maildir + "/cur", limit)
    cache_path = maildir + "/" + SIZE_CACHE
    if snapshots is not None and not stayed:
        known = snapshots.get(maildir, names)
        if known is not None:
            if fsutil.lexists(cache_path):  # as below: every size came from a name
                _update_cache(cache_path, sizecache.load(cache_path), [], {}, quick)
            if stamps is not None:
                snapshots.put(maildir, replace(known, stamps=stamps))
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
        _fill_sizes(maildir, bases, sizes, locations, quick)
    elif fsutil.lexists(cache_path):
        # No message needed the cache now; empty it of entries for messages now gone.
        _update_cache(cache_path, sizecache.load(cache_path), [], {}, quick)

    # Delivery order: the float alone (a fast sort) unless two messages share it.
    if len(set(orders)) == len(orders):
        index = sorted(range(len(bases)), key=orders.__getitem__)
    else:
        index = sorted(range(len(bases)), key=lambda i: (orders[i], bases[i]))
    with _gc_paused() if len(bases) > INLINE_LIMIT else contextlib.nullcontext():
        if plain and None not in sizes:
            # Every key is its own uid: build in directory order, then put in delivery order.
            infos = list(map(MessageInfo, bases, bases, cast(list[int], sizes)))
            messages = tuple(map(infos.__getitem__, index))
        else:
            # A message that vanished while it was measured has no size and is not listed.
            keys = [bases[i] for i in index if sizes[i] is not None]
            wires = [size for i in index if (size := sizes[i]) is not None]
            messages = tuple(map(MessageInfo, keys, uids_of(keys), wires))
    if snapshots is not None and named and not stayed:
        # Without a copy left in new/ and with one name per base, the locations were built
        # from the names in listing order and hold nothing else (see _Snapshot.names).
        listed = None if len(locations) == len(names) else names
        snapshots.put(maildir, _Snapshot(listed, messages, locations, stamps))
    return messages, locations


def relative_path(location: str) -> str:
    """The path, relative to the maildir, of a location from :func:`take_snapshot`.

    A file in cur/ (nearly all) is stored as its bare name, which saves building 100,000
    strings at each login; a name cannot hold "/", so ``new/<name>`` is unambiguous.
    """
    return location if "/" in location else "cur/" + location


def _fill_sizes(
    maildir: str,
    keys: list[str],
    sizes: list[int | None],
    locations: dict[str, str],
    quick: bool,
) -> None:
    """Fill in the sizes of names without ``,W=`` from the cache, else by reading the file.

    A message that is gone (or no longer a regular file) keeps None: it is not listed.
    """
    cache_path = maildir + "/" + SIZE_CACHE
    old_cache = sizecache.load(cache_path)
    cache_hits: list[str] = []
    measured: sizecache.CacheEntries = {}
    for i, base in enumerate(keys):
        if sizes[i] is not None:
            continue
        path = maildir + "/" + relative_path(locations[base])
        try:
            st = os.lstat(path)
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
        found = _measure(path)
        if found is None:
            continue
        sizes[i] = found[1]
        if sizecache.cacheable(base):
            measured[base] = found
    _update_cache(cache_path, old_cache, cache_hits, measured, quick)


def _update_cache(
    cache_path: str,
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
            sizecache.save(cache_path, fresh)


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
        try:
            expunge.write(self._maildir, keys, self._fsync)
        except OSError as exc:
            raise store_error(exc) from None
        known = {key: relative_path(self._locations[key]) for key in keys}
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
    full disk.  ``snapshot_budget`` is how many messages' snapshots are kept for reuse by the
    next open of an unchanged maildrop (:class:`Snapshots`); 0 keeps none.
    """

    def __init__(
        self,
        template: str,
        *,
        fsync: Fsync = os.fsync,
        hostname: str | None = None,
        snapshot_budget: int = SNAPSHOT_BUDGET,
    ) -> None:
        self._template = template
        self._fsync = fsync
        self._names = UniqueNames(hostname)
        self._snapshots = Snapshots(snapshot_budget) if snapshot_budget > 0 else None

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
            messages, locations = take_snapshot(maildir, snapshots=self._snapshots)
        except OSError as exc:
            os.close(lock_fd)
            raise store_error(exc) from None
        except BaseException:
            os.close(lock_fd)
            raise
        return MaildirMaildrop(maildir, lock_fd, messages, locations, self._fsync)

    def _open_quick(self, maildir: str, lock_fd: int) -> MaildirMaildrop | None:
        """Open a small maildrop without blocking work (see the module docstring), or None."""
        try:
            # An interrupted deletion is finished in the thread.  A journal's temporary file
            # alone (a crash before the rename) deletes nothing, so it does not stop a quick
            # open: the thread's recover() or the next journal write removes it.
            if fsutil.lexists(maildir + "/" + expunge.JOURNAL):
                return None
            messages, locations = take_snapshot(
                maildir, limit=INLINE_LIMIT, snapshots=self._snapshots
            )
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
