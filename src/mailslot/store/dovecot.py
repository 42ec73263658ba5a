"""Dovecot's ``dovecot-uidlist``: the IMAP UIDs, POP3 order and saved UIDLs of a Maildir.

RFC 1939 section 7 asks that a unique-id never change for a message; a site moving from
Dovecot keeps that promise only by sending Dovecot's own, which come from this file.

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
import operator
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
class Uidlist:
    """One parsed ``dovecot-uidlist``.

    ``uids`` maps each base name to its UID, in UID order; ``extensions`` holds the fields
    of the records that have any (few do: a dict per record would double the parse time).
    """

    version: int
    uidvalidity: int
    next_uid: int
    guid: str
    header_rest: str
    uids: dict[str, int]
    extensions: dict[str, dict[str, str]] = field(default_factory=dict)
    stamps: tuple[int, int, int, int] | None = None  # ino, size, mtime_ns, ctime_ns
    # For reading only what Dovecot appended since (it appends records in place):
    header_line: bytes = b""  # the first line, newline included
    parsed: int = 0  # bytes of whole lines read
    last_uid: int = 0

    def render(self) -> bytes:
        """The file as Dovecot writes it (version 3), records in UID order."""
        header = f"3 V{self.uidvalidity} N{self.next_uid} G{self.guid}"
        lines = [header + (" " + self.header_rest if self.header_rest else "")]
        extensions = self.extensions
        for base, uid in sorted(self.uids.items(), key=operator.itemgetter(1)):
            ext = extensions.get(base)
            fields = "".join(f" {key}{value}" for key, value in ext.items()) if ext else ""
            lines.append(f"{uid}{fields} :{base}")
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


# The records Dovecot writes: "<uid>[ <Key><value>...] :<base>"; anything else (version 1,
# odd spacing, a ":" or "/" in a name) goes through the line-by-line reader.
# One match per line, from its start: as many matches as lines means every line is one.
_RECORD = re.compile(r"^(\d+)((?: [A-Z][^ \n]*)*) :([^\n:/]+)\n", re.MULTILINE)


def parse(data: bytes) -> Uidlist:
    """Parse a uidlist; raise :class:`CorruptUidlist` where Dovecot would call it corrupted.

    A last line without its newline is being appended by Dovecot (under its lock) and is
    left out: the message it names is read again once the lock is free.
    """
    text = data.decode("utf-8", "surrogateescape")
    header, _, body = text.partition("\n")
    body = body[: body.rfind("\n") + 1]
    uidlist = _header(header)
    uidlist.header_line = data[: data.find(b"\n") + 1]
    uidlist.parsed = len(uidlist.header_line) + len(body.encode("utf-8", "surrogateescape"))
    found = _RECORD.findall(body) if uidlist.version == 3 else []
    if found and len(found) == body.count("\n"):
        uids = list(map(int, map(operator.itemgetter(0), found)))
        bases = list(map(operator.itemgetter(2), found))
        if (
            (not uids or (uids[0] > 0 and uids[-1] < (1 << 32) - 1))
            and all(map(operator.lt, uids, uids[1:]))
            and len(set(bases)) == len(bases)
        ):
            uidlist.uids = dict(zip(bases, uids, strict=True))
            for _, fields, base in filter(operator.itemgetter(1), found):
                uidlist.extensions[base] = _fields(fields)
            if uids:
                uidlist.next_uid = max(uidlist.next_uid, uids[-1] + 1)
                uidlist.last_uid = uids[-1]
            return uidlist
    _records(uidlist, body.split("\n"))
    return uidlist


def _fields(text: str) -> dict[str, str]:
    extensions: dict[str, str] = {}
    for item in text.split(" "):
        if item and "A" <= item[0] <= "Z":
            extensions.setdefault(item[0], item[1:])
    return extensions


def _header(header: str) -> Uidlist:
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
    return Uidlist(version, uidvalidity, next_uid, guid, " ".join(rest), {})


def _records(uidlist: Uidlist, lines: list[str]) -> None:
    """Dovecot's line-by-line reading, for every file the fast path does not take."""
    uids = uidlist.uids
    all_extensions = uidlist.extensions
    last = uidlist.last_uid
    for line in lines:
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
        if uidlist.version == 3:
            # Fields up to the first item that starts with ":" (a value may hold one).
            items = []
            tail = tail.lstrip(" ")
            while tail and tail[0] != ":":
                item, _, tail = tail.partition(" ")
                items.append(item)
                tail = tail.lstrip(" ")
            extensions = _fields(" ".join(items))
            tail = tail[1:]
        if not tail or "/" in tail:
            raise CorruptUidlist("dovecot-uidlist: broken file name")
        base = tail.partition(":")[0]
        if uids.pop(base, None) == uid:  # a record repeated: its fields add up
            extensions = {**all_extensions.get(base, {}), **extensions}
        uids[base] = uid
        if extensions:
            all_extensions[base] = extensions
        else:
            all_extensions.pop(base, None)
    uidlist.next_uid = max(uidlist.next_uid, last + 1)
    uidlist.last_uid = last


def _stamps(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def stamps(maildir: int) -> tuple[int, int, int, int] | None:
    """The uidlist's inode, size, mtime and ctime, or None if there is none."""
    try:
        st = os.stat(UIDLIST, dir_fd=maildir, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return _stamps(st) if stat.S_ISREG(st.st_mode) else None


def read(maildir: int, known: Uidlist | None = None) -> Uidlist | None:
    """The uidlist of the Maildir ``maildir``, or None; raises :class:`CorruptUidlist`.

    ``known`` is an earlier reading of it: if the file is the same one, grown, with the same
    first line, only the records appended since are read (Dovecot appends new messages'
    records in place; parsing 100,000 again for each new one would cost a login 0.2 s).
    """
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
        if (
            known is not None
            and known.stamps is not None
            and known.stamps[0] == st.st_ino
            and st.st_size > known.parsed > 0
            and os.pread(fd, len(known.header_line), 0) == known.header_line
        ):
            tail = _read_from(fd, known.parsed)
            tail = tail[: tail.rfind(b"\n") + 1]
            grown = Uidlist(
                known.version,
                known.uidvalidity,
                known.next_uid,
                known.guid,
                known.header_rest,
                dict(known.uids),
                dict(known.extensions),
                _stamps(st),
                known.header_line,
                known.parsed + len(tail),
                known.last_uid,
            )
            _records(grown, tail.decode("utf-8", "surrogateescape").split("\n"))
            return grown
        data = _read_from(fd, 0)
    finally:
        os.close(fd)
    uidlist = parse(data)
    uidlist.stamps = _stamps(st)
    return uidlist


def _read_from(fd: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


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
        uidlist = read(maildir, known)
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
        missing = sorted((b for b in bases if b not in uidlist.uids), key=sort_key)
        if not missing and current is not None:
            return current
        for base in missing:
            uidlist.uids[base] = uidlist.next_uid
            uidlist.next_uid += 1
        if not uidlist.guid:
            uidlist.guid = secrets.token_hex(16)
        uid, gid, mode = _owner(maildir, current)
        data = uidlist.render()
        st = fsutil.replace_file(
            maildir,
            UIDLIST,
            data,
            fsync,
            temp=_TEMP,
            owner=(uid, gid) if os.geteuid() == 0 else None,  # keep the mail user's file theirs
            mode=mode or 0o600,
        )
        uidlist.stamps = _stamps(st)
        uidlist.header_line = data[: data.find(b"\n") + 1]
        uidlist.parsed = len(data)
        uidlist.last_uid = max(uidlist.uids.values(), default=0)
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


# The longest unique-id sent: "+OK <n> <uid>" must fit RFC 2449's 512-octet response line.
MAX_UID = 480


def _unique_id(value: str, base: str) -> str:
    """``value`` if it can go on the wire (0x21-0x7E, RFC 1939 section 7), else a digest.

    Dovecot sends names longer than 70 octets whole, and so do we (the client compares what
    it saw); a value with a space or a control character would break the UIDL line, and
    one over :data:`MAX_UID` octets (only a saved one can be) the 512-octet line limit.
    """
    if 0 < len(value) <= MAX_UID and value.isascii() and value.isprintable() and " " not in value:
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
        deleted_flag: str | None = None,
        wait: float = LOCK_WAIT,
    ) -> None:
        from mailslot.store.dovecotformat import UidlFormat

        self.format = UidlFormat(uidl_format)
        self.reuse_xuidl = reuse_xuidl
        self.deleted_flag = deleted_flag
        self._fsync = fsync
        self._wait = wait
        self._cache = UidlistCache()
        self._xuidls: OrderedDict[str, str | None] = OrderedDict()
        self._xuidl_lock = threading.Lock()

    def key(self, maildir: int) -> object:
        """What a cached snapshot of this maildrop must have been made from to be reused."""
        if self.deleted_flag is None:
            return stamps(maildir)
        return stamps(maildir), keyword_stamps(maildir)

    def hidden(self, maildir: int) -> str | None:
        """The flag letter of messages hidden instead of deleted, if any has it."""
        if self.deleted_flag is None:
            return None
        return keywords(maildir).get(self.deleted_flag)

    def hide_letter(self, maildir: int) -> str:
        """The flag letter to hide messages with (registered in dovecot-keywords)."""
        assert self.deleted_flag is not None
        return keyword_letter(maildir, self.deleted_flag, self._fsync, self._wait)

    def view(
        self,
        path: str,
        maildir: int,
        bases: list[str],
        header: Callable[[str], bytes | None],
        quick: bool,
    ) -> tuple[list[int], list[str], list[str], object]:
        """POP3 order (indexes into ``bases``, and those bases), the unique-ids in that
        order, and the uidlist's stamps.

        ``bases`` are the messages to list; ``header(base)`` reads the start of one (for
        X-UIDL).  A base the uidlist lacks is given its UID first (under the lock).
        """
        uidlist = self._cache.get(path, maildir)
        known = None if uidlist is None else uidlist.uids
        if known is None or not all(map(known.__contains__, bases)):
            if quick:
                raise NeedsThread
            uidlist = assign(maildir, bases, self._fsync, self._wait)
            self._cache.put(path, uidlist)
        assert uidlist is not None
        uids = list(map(uidlist.uids.__getitem__, bases))
        index = sorted(range(len(bases)), key=uids.__getitem__)
        extensions = uidlist.extensions
        if extensions and any("O" in extensions.get(base, ()) for base in bases):
            # POP3 order numbers first, lowest first; the rest after them, by UID.
            def order(i: int) -> tuple[int, int]:
                value = extensions.get(bases[i], {}).get("O")
                if value is None:
                    return 1, 0
                return 0, int(value) if value.isdigit() else 1 << 32

            index.sort(key=order)
        ordered = list(map(bases.__getitem__, index))
        numbers = list(map(uids.__getitem__, index))
        made = self.format.expand_all(numbers, uidlist.uidvalidity, ordered, extensions)
        special = (
            [
                n
                for n, base in enumerate(ordered)
                if "P" in extensions.get(base, ()) or self.reuse_xuidl
            ]
            if extensions or self.reuse_xuidl
            else []
        )
        for n in special:
            base = ordered[n]
            saved = extensions.get(base, {}).get("P")
            if saved is not None:
                made[n] = saved or base  # an empty P stands for the base name
            elif (xuidl := self._xuidl(base, header, quick)) is not None:
                made[n] = xuidl
        # Every unique-id must go on the wire: one check of all of them at once.
        joined = "".join(made)
        plain = joined.isascii() and joined.isprintable() and " " not in joined
        if not plain or "" in made or (made and max(map(len, made)) > MAX_UID):
            made = [_unique_id(value, base) for value, base in zip(made, ordered, strict=True)]
        if self.deleted_flag is not None:
            return index, ordered, made, (uidlist.stamps, keyword_stamps(maildir))
        return index, ordered, made, uidlist.stamps

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


# --------------------------------------------------------------------------- keywords


KEYWORDS = "dovecot-keywords"
_KEYWORDS_TEMP = "dovecot-keywords.mailslot-tmp"
MAX_KEYWORDS = 26  # the letters a-z


def keywords(maildir: int) -> dict[str, str]:
    """``dovecot-keywords``: keyword -> the Maildir flag letter it is written as.

    Each line is ``<index> <keyword>``; index 0 is ``a``, 25 is ``z`` (Dovecot wiki, Maildir
    format).  Lines Dovecot would skip are skipped.
    """
    data = fsutil.read_own_file(maildir, KEYWORDS)
    found: dict[str, str] = {}
    if not data:
        return found
    for line in data.decode("utf-8", "surrogateescape").split("\n"):
        index, _, name = line.partition(" ")
        if not (index.isdigit() and index.isascii()) or not name or name in found:
            continue
        if int(index) < MAX_KEYWORDS:
            found[name] = chr(ord("a") + int(index))
    return found


def keyword_stamps(maildir: int) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(KEYWORDS, dir_fd=maildir, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return _stamps(st)


def keyword_letter(maildir: int, keyword: str, fsync: Fsync, wait: float = LOCK_WAIT) -> str:
    """The letter of ``keyword``, added to ``dovecot-keywords`` if it is not there yet.

    Dovecot changes that file only while it holds the uidlist's lock, and so do we.  Raises
    :class:`TemporaryFailure` when all 26 letters are taken.
    """
    known = keywords(maildir)
    if keyword in known:
        return known[keyword]
    held = lock(maildir, wait)
    try:
        data = fsutil.read_own_file(maildir, KEYWORDS) or b""
        known = keywords(maildir)
        if keyword in known:
            return known[keyword]
        used = {ord(letter) - ord("a") for letter in known.values()}
        free = next((i for i in range(MAX_KEYWORDS) if i not in used), None)
        if free is None:
            raise TemporaryFailure("dovecot-keywords: all 26 keyword letters are taken")
        if data and not data.endswith(b"\n"):
            data += b"\n"
        data += f"{free} {keyword}\n".encode("utf-8", "surrogateescape")
        uid, gid, mode = _owner(maildir, None)
        fsutil.replace_file(
            maildir,
            KEYWORDS,
            data,
            fsync,
            temp=_KEYWORDS_TEMP,
            owner=(uid, gid) if os.geteuid() == 0 else None,
            mode=mode or 0o600,
        )
        return chr(ord("a") + free)
    finally:
        unlock(maildir, held)


def has_flag(name: str, letter: str) -> bool:
    """Whether the Maildir file ``name`` (``<base>:2,<flags>``) carries ``letter``."""
    _, sep, flags = name.rpartition(":2,")
    return bool(sep) and letter in flags
