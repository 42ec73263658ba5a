"""Dovecot's ``dovecot-uidlist``: the IMAP UIDs, POP3 order and saved UIDLs of a Maildir.

Dovecot 2.3 numbers every message of a Maildir in ``<maildir>/dovecot-uidlist`` (Dovecot wiki,
"Maildir format", and src/lib-storage/index/maildir/maildir-uidlist.c, read to learn the
format).  Version 3 starts with ``3 V<uidvalidity> N<next uid> G<mailbox guid>`` (and maybe
more ``<letter><value>`` fields); each line after it is ``<uid> [<key><value> ...] :<base>``,
UIDs ascending, where the keys are ``S`` and ``W`` (sizes), ``P`` (a POP3 UIDL saved by
``pop3_save_uidl`` or a migration: used as is; an empty ``P`` means the base name), ``O``
(a POP3 order number: lower first, records without one after those) and ``G`` (the message
GUID, else the base name).  Version 1 is ``1 <uidvalidity> <next uid>`` and ``<uid> <base>``.
The next UID is the larger of ``N`` and the last record's UID plus one.

Messages that are not in the uidlist yet get UIDs as Dovecot assigns them: from the next UID
up, in Dovecot's file-name order (the leading seconds, then the ``M<usecs>`` of both names
if both have one, then the rest of the name).  The uidlist is changed only under Dovecot's
own lock, ``dovecot-uidlist.lock``, created with ``O_EXCL`` and holding ``<pid>:<host>``:
while another process holds it we wait; a lock is stale, and removed, when its file is more
than 2 seconds old and names a process of this host that no longer exists, or when neither
it nor the uidlist changed for 120 seconds (Dovecot's dotlock rules, src/lib/file-dotlock.c).
The new uidlist is written to a temporary file, fsynced and renamed over the old one, as
Dovecot's own rewrite does, so a reader never sees half a file.

A Maildir without a uidlist gets one with a new UIDVALIDITY taken from
``<maildir>/dovecot-uidvalidity`` (8 hex digits; the next value, or the current time if
larger) and the ``dovecot-uidvalidity.<hex>`` marker renamed along, as Dovecot does.  A
uidlist recreated by Dovecot with a new UIDVALIDITY changes the unique-ids made with ``%v``
at once, as in Dovecot.

Parsing a large uidlist costs some milliseconds, so a parsed one is cached by its inode,
size, mtime and ctime; a login that finds the same stamps reuses it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from mailslot.store import fsutil
from mailslot.store.base import MaildropLocked, TemporaryFailure
from mailslot.store.fsutil import Fsync

UIDLIST = "dovecot-uidlist"
LOCK = "dovecot-uidlist.lock"
_TEMP = "dovecot-uidlist.mailslot-tmp"
UIDVALIDITY = "dovecot-uidvalidity"
STALE_TIMEOUT = 120  # MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT
STALE_PID_CHECK = 2  # STALE_PID_CHECK_SECS: a younger lock's pid is not read yet
LOCK_WAIT = 10.0  # how long a login waits for another process's lock
_POLL = 0.05
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_USECS = re.compile(r"\.[^.]*?M(\d+)")

_clock = time.time  # tests move it
_sleep = time.sleep


class CorruptUidlist(TemporaryFailure):
    """``dovecot-uidlist`` cannot be read (``[SYS/TEMP]``): Dovecot rebuilds such a file."""


@dataclass(slots=True)
class Record:
    uid: int
    base: str
    extensions: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Uidlist:
    """One parsed ``dovecot-uidlist``; ``records`` maps base names to records."""

    version: int
    uidvalidity: int
    next_uid: int
    guid: str
    header_rest: str
    records: dict[str, Record]
    stamps: tuple[int, int, int, int] | None = None  # ino, size, mtime_ns, ctime_ns

    def render(self) -> bytes:
        """The file as Dovecot writes it (version 3), records in UID order."""
        header = f"3 V{self.uidvalidity} N{self.next_uid} G{self.guid}"
        lines = [header + (" " + self.header_rest if self.header_rest else "")]
        for record in sorted(self.records.values(), key=lambda r: r.uid):
            ext = "".join(f" {key}{value}" for key, value in record.extensions.items())
            lines.append(f"{record.uid}{ext} :{record.base}")
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def parse(data: bytes) -> Uidlist:
    """Parse a uidlist; raise :class:`CorruptUidlist` where Dovecot would call it corrupted."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    header = lines[0]
    if len(header) < 2 or not header[0].isdigit() or header[1] != " ":
        raise CorruptUidlist("dovecot-uidlist: invalid version number")
    version = int(header[0])
    uidvalidity = next_uid = 0
    guid, rest = "", []
    if version == 1:
        fields = header[2:].split()
        if len(fields) < 2 or not all(f.isdigit() for f in fields[:2]):
            raise CorruptUidlist("dovecot-uidlist: corrupted version 1 header")
        uidvalidity, next_uid = int(fields[0]), int(fields[1])
    elif version == 3:
        for item in header[2:].split(" "):
            if not item:
                continue
            key, value = item[0], item[1:]
            if key in "VN":
                if not value.isdigit() or not value.isascii():
                    raise CorruptUidlist(f"dovecot-uidlist: invalid {key} header")
                if key == "V":
                    uidvalidity = int(value)
                else:
                    next_uid = int(value)
            elif key == "G":
                guid = value
            else:
                rest.append(item)
    else:
        raise CorruptUidlist(f"dovecot-uidlist: unsupported version {version}")
    if not 0 < uidvalidity < 1 << 32 or not 0 < next_uid < 1 << 32:
        raise CorruptUidlist("dovecot-uidlist: broken header")
    records: dict[str, Record] = {}
    last = 0
    for line in lines[1:]:
        if not line:
            continue
        head, _, tail = line.partition(" ")
        if not head.isdigit() or not head.isascii() or not tail:
            raise CorruptUidlist("dovecot-uidlist: invalid record")
        uid = int(head)
        if uid <= last or uid >= (1 << 32) - 1:
            raise CorruptUidlist("dovecot-uidlist: UIDs not ordered")
        last = uid
        extensions: dict[str, str] = {}
        if version == 3:
            tail = tail.lstrip(" ")
            while tail and tail[0] != ":":
                item, _, tail = tail.partition(" ")
                tail = tail.lstrip(" ")
                if "A" <= item[0] <= "Z":
                    extensions.setdefault(item[0], item[1:])
            tail = tail[1:]
        if not tail or "/" in tail:
            raise CorruptUidlist("dovecot-uidlist: broken file name")
        base = tail.partition(":")[0]
        previous = records.pop(base, None)
        if previous is not None and previous.uid == uid:
            extensions = {**previous.extensions, **extensions}
        records[base] = Record(uid, base, extensions)
    next_uid = max(next_uid, last + 1)
    return Uidlist(version, uidvalidity, next_uid, guid, " ".join(rest), records)


def _stamps(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def stamps(maildir: int) -> tuple[int, int, int, int] | None:
    """The uidlist's inode, size, mtime and ctime, or None if there is none."""
    try:
        st = os.stat(UIDLIST, dir_fd=maildir, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return _stamps(st) if stat.S_ISREG(st.st_mode) else None


def read(maildir: int) -> Uidlist | None:
    """The uidlist of the Maildir ``maildir``, or None; raises :class:`CorruptUidlist`."""
    try:
        fd = os.open(UIDLIST, _READ, dir_fd=maildir)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptUidlist("dovecot-uidlist is a symlink") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptUidlist("dovecot-uidlist is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    uidlist = parse(b"".join(chunks))
    uidlist.stamps = _stamps(st)
    return uidlist


class UidlistCache:
    """Parsed uidlists of recently opened maildrops, reused while their stamps are the same."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._entries: OrderedDict[str, Uidlist] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, maildir: int) -> Uidlist | None:
        now = stamps(maildir)
        if now is None:
            return None
        with self._lock:
            known = self._entries.get(path)
            if known is not None and known.stamps == now:
                self._entries.move_to_end(path)
                return known
        uidlist = read(maildir)
        if uidlist is not None:
            self.put(path, uidlist)
        return uidlist

    def put(self, path: str, uidlist: Uidlist) -> None:
        with self._lock:
            self._entries[path] = uidlist
            self._entries.move_to_end(path)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


def sort_key(base: str) -> tuple[int, int, str]:
    """Dovecot's maildir_filename_sort_cmp as a key: leading seconds, usecs, the rest.

    Dovecot compares the microseconds only when both names have them; a name without them
    sorts as 0 here, which differs only for two names of the same second of which one lacks
    them.
    """
    i = 0
    while i < len(base) and "0" <= base[i] <= "9":
        i += 1
    seconds = int(base[:i]) if i else 0
    rest = base[i:]
    match = _USECS.match(rest)
    return seconds, int(match.group(1)) if match else 0, rest


# --------------------------------------------------------------------------- the lock


def _read_pid(maildir: int) -> tuple[int, str] | None:
    data = fsutil.read_own_file(maildir, LOCK)
    if not data:
        return None
    pid, _, host = data.decode("ascii", "replace").partition(":")
    return (int(pid), host) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists
    return True


def _stale(maildir: int, lock: os.stat_result, now: float) -> bool:
    if now - lock.st_mtime >= STALE_PID_CHECK:
        owner = _read_pid(maildir)
        if owner is not None and owner[1] == socket.gethostname():
            return owner[0] != os.getpid() and not _alive(owner[0])
    changed = max(lock.st_mtime, lock.st_ctime)
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(UIDLIST, dir_fd=maildir, follow_symlinks=False)
        changed = max(changed, st.st_mtime, st.st_ctime)
    return now > changed + STALE_TIMEOUT


def lock(maildir: int, wait: float = LOCK_WAIT) -> os.stat_result:
    """Take ``dovecot-uidlist.lock``; return its stat (for :func:`unlock`).

    Raises :class:`MaildropLocked` if another live process holds it for ``wait`` seconds.
    """
    deadline = _clock() + wait
    content = f"{os.getpid()}:{socket.gethostname()}".encode()
    while True:
        try:
            fd = os.open(LOCK, _EXCL, 0o600, dir_fd=maildir)
        except FileExistsError:
            try:
                st = os.stat(LOCK, dir_fd=maildir, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if _stale(maildir, st, _clock()):
                with contextlib.suppress(FileNotFoundError):
                    again = os.stat(LOCK, dir_fd=maildir, follow_symlinks=False)
                    if (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns):
                        os.unlink(LOCK, dir_fd=maildir)
                continue
            if _clock() >= deadline:
                raise MaildropLocked("dovecot-uidlist is locked by another process") from None
            _sleep(_POLL)
            continue
        try:
            fsutil.write_all(fd, content)
            return os.fstat(fd)
        finally:
            os.close(fd)


def unlock(maildir: int, held: os.stat_result) -> None:
    """Remove the lock if it is still ours (not overridden as stale by someone else)."""
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(LOCK, dir_fd=maildir, follow_symlinks=False)
        if st.st_ino == held.st_ino:
            os.unlink(LOCK, dir_fd=maildir)


# --------------------------------------------------------------------------- UIDVALIDITY


def _next_uidvalidity(maildir: int) -> int:
    """mailbox_uidvalidity_next() for the Maildir's own control directory.

    The files it creates get the Maildir's owner when we run as root, since Dovecot, as
    the mail user, opens ``dovecot-uidvalidity`` for writing.
    """
    now = int(_clock()) & 0xFFFFFFFF or 1
    data = fsutil.read_own_file(maildir, UIDVALIDITY)
    current = None
    if data is not None:
        with contextlib.suppress(ValueError):
            current = int(data[:8].decode("ascii"), 16) or None
    if current is None:  # rescan the markers
        markers = []
        with os.scandir(maildir) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(UIDVALIDITY + "."):
                    with contextlib.suppress(ValueError):
                        markers.append(int(name[len(UIDVALIDITY) + 1 :], 16))
        if not markers:
            with contextlib.suppress(OSError):
                fd = os.open(f"{UIDVALIDITY}.{now:08x}", _EXCL, 0o444, dir_fd=maildir)
                try:
                    _give_away(maildir, fd)
                finally:
                    os.close(fd)
            _write_uidvalidity(maildir, now)
            return now
        current = max(markers)
    value = current
    for _ in range(10):
        old, value = value, (value + 1) & 0xFFFFFFFF or 1
        try:
            os.rename(
                f"{UIDVALIDITY}.{old:08x}",
                f"{UIDVALIDITY}.{value:08x}",
                src_dir_fd=maildir,
                dst_dir_fd=maildir,
            )
            break
        except FileNotFoundError:
            continue
        except OSError:
            break
    _write_uidvalidity(maildir, value)
    return value


def _write_uidvalidity(maildir: int, value: int) -> None:
    with contextlib.suppress(OSError):
        fsutil.replace_file(maildir, UIDVALIDITY, f"{value:08x}".encode())
        fd = os.open(UIDVALIDITY, _READ, dir_fd=maildir)
        try:
            _give_away(maildir, fd)
            os.fchmod(fd, stat.S_IMODE(os.fstat(maildir).st_mode) & 0o666 or 0o600)
        finally:
            os.close(fd)


def _give_away(maildir: int, fd: int) -> None:
    """As root, make the file ``fd`` the Maildir owner's (Dovecot runs as the mail user)."""
    if os.geteuid() == 0:
        st = os.fstat(maildir)
        os.fchown(fd, st.st_uid, st.st_gid)


# --------------------------------------------------------------------------- assigning UIDs


def _owner(maildir: int, old: Uidlist | None) -> tuple[int, int, int]:
    """uid, gid and mode for a new uidlist: the old one's, else the Maildir's (mode & 0666)."""
    if old is not None:
        with contextlib.suppress(OSError):
            st = os.stat(UIDLIST, dir_fd=maildir, follow_symlinks=False)
            return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)
    st = os.fstat(maildir)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode) & 0o666


def assign(maildir: int, bases: list[str], fsync: Fsync, wait: float = LOCK_WAIT) -> Uidlist:
    """Give UIDs to those of ``bases`` the uidlist lacks, under Dovecot's lock; return it.

    ``bases`` are the messages on disk.  Records of files that are gone stay: Dovecot drops
    them at its own next full sync, and a record costs a reader nothing.
    """
    held = lock(maildir, wait)
    try:
        current = read(maildir)
        if current is None:
            uidlist = Uidlist(3, _next_uidvalidity(maildir), 1, secrets.token_hex(16), "", {})
        else:
            uidlist = current
        missing = sorted((b for b in bases if b not in uidlist.records), key=sort_key)
        if not missing and current is not None:
            return current
        for base in missing:
            uidlist.records[base] = Record(uidlist.next_uid, base)
            uidlist.next_uid += 1
        if not uidlist.guid:
            uidlist.guid = secrets.token_hex(16)
        uid, gid, mode = _owner(maildir, current)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_TEMP, dir_fd=maildir)
        fd = os.open(_TEMP, _EXCL, 0o600, dir_fd=maildir)
        try:
            try:
                if os.geteuid() == 0:  # keep the mail user's file theirs
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, mode or 0o600)
                fsutil.write_all(fd, uidlist.render())
                fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            os.rename(_TEMP, UIDLIST, src_dir_fd=maildir, dst_dir_fd=maildir)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(_TEMP, dir_fd=maildir)
            raise
        uidlist.stamps = _stamps(st)
        return uidlist
    finally:
        unlock(maildir, held)


# --------------------------------------------------------------------------- flags


def with_flag(name: str, flag: str) -> str:
    """``name`` (``<base>:2,<flags>`` or a bare base) with ``flag`` added, flags sorted.

    The Maildir specification lists flags in ASCII order; Dovecot's keyword letters
    (``a``-``z``, from ``dovecot-keywords``) sort after the standard upper-case ones.
    """
    base, sep, info = name.partition(":")
    if sep and not info.startswith("2,"):
        return name  # an info part we do not understand: leave the file alone
    flags = set(info[2:]) if sep else set()
    if flag in flags:
        return name
    flags.add(flag)
    return f"{base}:2,{''.join(sorted(flags))}"


# --------------------------------------------------------------------------- a snapshot's view


class NeedsThread(Exception):
    """A quick (event-loop) snapshot would have to lock, write or read messages."""


_XUIDL_CACHE = 200_000


def _unique_id(value: str, base: str) -> str:
    """``value`` if it can go on the wire (0x21-0x7E, RFC 1939 section 7), else a digest.

    Dovecot sends names longer than 70 octets whole, and so do we (the client compares what
    it saw); a value with a space or a control character would break the UIDL line.
    """
    if value and value.isascii() and value.isprintable() and " " not in value:
        return value
    from mailslot.store.maildirnames import uid_of

    return uid_of("\n" + base)


class Compat:
    """What a Maildir store needs to serve a maildrop as Dovecot does (see the module doc).

    ``uidl_format`` is a ``pop3_uidl_format``; with ``reuse_xuidl`` a message's first
    ``X-UIDL:`` header is its unique-id unless the uidlist saved one (``pop3_reuse_xuidl``).
    """

    def __init__(
        self,
        uidl_format: str,
        *,
        fsync: Fsync = os.fsync,
        reuse_xuidl: bool = False,
        wait: float = LOCK_WAIT,
    ) -> None:
        from mailslot.store.dovecotformat import UidlFormat

        self.format = UidlFormat(uidl_format)
        self.reuse_xuidl = reuse_xuidl
        self._fsync = fsync
        self._wait = wait
        self._cache = UidlistCache()
        self._xuidls: OrderedDict[str, str | None] = OrderedDict()
        self._xuidl_lock = threading.Lock()

    def key(self, maildir: int) -> object:
        """What a cached snapshot of this maildrop must have been made from to be reused."""
        return stamps(maildir)

    def view(
        self,
        path: str,
        maildir: int,
        bases: list[str],
        header: Callable[[str], bytes | None],
        quick: bool,
    ) -> tuple[list[int], list[str], object]:
        """POP3 order (indexes into ``bases``) and unique-ids, and the uidlist's stamps.

        ``bases`` are the messages to list; ``header(base)`` reads the start of one (for
        X-UIDL).  A base the uidlist lacks is given its UID first (under the lock).
        """
        uidlist = self._cache.get(path, maildir)
        records = None if uidlist is None else uidlist.records
        if records is None or any(base not in records for base in bases):
            if quick:
                raise NeedsThread
            uidlist = assign(maildir, bases, self._fsync, self._wait)
            self._cache.put(path, uidlist)
            records = uidlist.records
        assert uidlist is not None
        found = [records[base] for base in bases]
        index = sorted(range(len(bases)), key=lambda i: found[i].uid)
        ordered = [(i, found[i]) for i in index if "O" in found[i].extensions]
        if ordered:
            # POP3 order numbers first, lowest first; the rest after them, by UID.
            def order(i: int) -> int:
                value = found[i].extensions.get("O", "")
                return int(value) if value.isdigit() else 1 << 32

            index.sort(key=lambda i: (0, order(i)) if "O" in found[i].extensions else (1, 0))
        validity = uidlist.uidvalidity
        expand = self.format.expand
        uids: list[str] = []
        for i in index:
            record, base = found[i], bases[i]
            saved = record.extensions.get("P")
            if saved is not None:
                value = saved or base  # an empty P stands for the base name
            elif self.reuse_xuidl and (xuidl := self._xuidl(base, header, quick)) is not None:
                value = xuidl
            else:
                value = expand(record.uid, validity, base, record.extensions.get("G") or base)
            uids.append(_unique_id(value, base))
        return index, uids, uidlist.stamps

    def _xuidl(self, base: str, header: Callable[[str], bytes | None], quick: bool) -> str | None:
        with self._xuidl_lock:
            if base in self._xuidls:
                return self._xuidls[base]
        if quick:
            raise NeedsThread
        value = x_uidl(header(base) or b"")
        with self._xuidl_lock:
            self._xuidls[base] = value
            while len(self._xuidls) > _XUIDL_CACHE:
                self._xuidls.popitem(last=False)
        return value


def x_uidl(head: bytes) -> str | None:
    """The first ``X-UIDL:`` header's value in the header block ``head`` (RFC 5322 2.2)."""
    text = head.decode("latin-1")
    end = min((i for i in (text.find("\n\n"), text.find("\r\n\r\n")) if i >= 0), default=len(text))
    lines = text[:end].replace("\r\n", "\n").split("\n")
    for n, line in enumerate(lines):
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "x-uidl":
            for more in lines[n + 1 :]:  # unfold
                if not more[:1].isspace():
                    break
                value += " " + more.strip()
            return value.strip() or None
    return None
