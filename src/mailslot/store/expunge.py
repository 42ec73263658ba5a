"""The expunge journal: crash-safe removal of marked messages (RFC 1939 section 6).

RFC 1939 section 6 has the UPDATE state remove every message marked as deleted.  Removing many
files is not atomic, so the keys are first written durably to ``<maildir>/.mailslot-expunge``;
then the files are unlinked and the directories fsynced, and only then is the journal removed.
Whoever opens the maildrop next finishes a journal left by a crash before taking its
snapshot.  A crash therefore removes every listed message (now or at the next open) or none,
and never one that is not listed.

An unlink that fails (EIO on one file) does not stop the others: every file is tried, and
those that failed are tried once more.  If some still remain, the journal stays, so the next
open removes them before it lists anything, and :class:`Progress` says how many are gone: the
reply to QUIT is then ``-ERR`` (RFC 1939 section 6 allows it) and the log says how many were
removed, never "nothing".  Once every file is unlinked and the journal is durable the messages
are gone for good, even if a directory fsync then fails: the journal, left in place, replays.

A full disk (ENOSPC, EDQUOT) cannot take the journal, and deleting is how a user frees space
on a full disk.  Then the files are unlinked directly, in order, without a journal.  A crash
part way leaves some of the marked messages deleted and some not, with nothing to finish the
rest: the all-or-nothing promise is given up for that one QUIT.  That is acceptable because
the client never got ``+OK`` for it (a QUIT without a reply promises nothing), every message
still there is intact and listed at the next login, every message gone was marked by its
owner, and no message that was not marked is touched.  Without a crash, the reply is ``+OK``
only if every marked message was removed and the removal is durable; otherwise it is ``-ERR``
and the log says how many were removed.

All of it works on the descriptors of the Maildir and of its cur/ and new/
(:mod:`mailslot.store.confine`): no name here is ever resolved through a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mailslot.store import confine, fsutil
from mailslot.store.base import TemporaryFailure
from mailslot.store.fsutil import Fsync
from mailslot.store.maildirnames import base_of

JOURNAL = ".mailslot-expunge"
_VERSION = 1
# Why a journal cannot be written when deleting must still work.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
# The one call that removes a message file (a test makes it fail, as on EIO).
_unlink = os.unlink


@dataclass(frozen=True, slots=True)
class Progress:
    """How a removal ended: keys now gone, keys still there, and whether it is durable."""

    deleted: int
    failed: int
    durable: bool
    error: str = ""  # the errno name of the last failure, for the log


def write(maildir: int, keys: Iterable[str], fsync: Fsync) -> None:
    """Durably record that ``keys`` are to be removed; nothing is removed yet.

    Raises OSError if the journal is not in place.  If it was written but its directory's
    fsync failed and it cannot be taken back either, it returns: the journal may outlive a
    crash, so the removal has to go ahead (roll forward) rather than be reported as undone.
    """
    # JSON escapes any character (even surrogate-escaped bytes of a file name) on one line.
    data = json.dumps({"version": _VERSION, "keys": list(keys)}).encode("ascii") + b"\n"
    fsutil.replace_file(maildir, JOURNAL, data, fsync)
    try:
        fsync(maildir)
    except OSError:
        # The caller reports failure, so the deletion must not happen later either.
        try:
            os.unlink(JOURNAL, dir_fd=maildir)
        except FileNotFoundError:
            pass
        except OSError:
            return
        raise


def pending(maildir: int) -> list[str] | None:
    """The keys of an unfinished journal, or None if there is none (or it is unreadable)."""
    data = fsutil.read_own_file(maildir, JOURNAL)
    if data is None:
        return None
    try:
        document = json.loads(data)
        keys = document["keys"]
        if document["version"] != _VERSION or not all(isinstance(k, str) for k in keys):
            raise ValueError("unknown journal format")
    except (ValueError, KeyError, TypeError):
        # The journal is written to a temporary file and renamed, so a damaged one was not
        # written by us; removing nothing is the safe half of "all or nothing".
        os.replace(JOURNAL, JOURNAL + ".damaged", src_dir_fd=maildir, dst_dir_fd=maildir)
        return None
    return list(keys)


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "unknown error")


class _Removal:
    """One pass of unlinks over cur/ and new/, remembering which keys could not go."""

    def __init__(self, directories: dict[str, int]) -> None:
        self.directories = directories
        self.failed: set[str] = set()
        self.error = ""

    def unlink(self, key: str, directory: int, name: str) -> bool:
        """Unlink one file; False if it was not there."""
        try:
            _unlink(name, dir_fd=directory)
        except FileNotFoundError:
            return False
        except OSError as exc:
            self.failed.add(key)
            self.error = _errno_name(exc)
        return True

    def unlink_listed(self, wanted: set[str]) -> None:
        """Unlink every file of a ``wanted`` key that cur/ or new/ lists now."""
        for directory in self.directories.values():
            try:
                names = os.listdir(directory)
            except OSError as exc:
                self.failed |= wanted
                self.error = _errno_name(exc)
                return
            for name in names:
                if not name.startswith(".") and base_of(name) in wanted:
                    self.unlink(base_of(name), directory, name)


def remove(
    maildir: int,
    keys: Sequence[str],
    fsync: Fsync,
    known_names: Mapping[str, str] | None = None,
    *,
    journaled: bool = True,
) -> Progress:
    """Unlink every file of ``keys`` in cur/ and new/, make it durable, drop the journal.

    ``known_names`` maps a key to its path relative to the maildir as last seen (the snapshot),
    which saves a directory scan when no other program renamed the file meanwhile.  Failed
    unlinks are retried once; with ``journaled`` the journal stays until every key is gone.
    Raises OSError or :class:`~mailslot.store.confine.NotADirectory` only before anything
    was unlinked (cur/ or new/ cannot be opened).
    """
    directories: dict[str, int] = {}
    try:
        for sub in ("cur", "new"):
            with contextlib.suppress(FileNotFoundError):
                directories[sub] = confine.open_directory(maildir, sub, sub)
        removal = _Removal(directories)
        to_scan: set[str] = set()
        for key in keys:
            relative = known_names.get(key) if known_names else None
            sub, _, name = (relative or "").rpartition("/")
            directory = directories.get(sub)
            if directory is None or not removal.unlink(key, directory, name):
                to_scan.add(key)  # renamed by another program since the snapshot, or unknown
        if to_scan:
            removal.unlink_listed(to_scan)
        if removal.failed:  # the retry: a transient error may have passed
            retry, removal.failed = removal.failed, set()
            removal.unlink_listed(retry)
        durable = True
        for directory in directories.values():
            try:
                fsync(directory)
            except OSError as exc:
                durable = False
                removal.error = _errno_name(exc)
    finally:
        for directory in directories.values():
            os.close(directory)
    if journaled and not removal.failed:
        # Every file is unlinked and the journal is durable: the messages are gone for good.
        # A journal left here (an fsync above failed) replays at the next open, harmlessly.
        if durable:
            with contextlib.suppress(OSError):
                os.unlink(JOURNAL, dir_fd=maildir)
                fsync(maildir)
        durable = True
    failed = len(removal.failed)
    return Progress(len(keys) - failed, failed, durable, removal.error)


def recover(maildir: int, fsync: Fsync) -> None:
    """Finish a journal left by an interrupted deletion, if there is one.

    Raises :class:`TemporaryFailure` if some of its files still cannot be removed: the
    maildrop must not be listed with them (they would be resurrected).
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(JOURNAL + ".tmp", dir_fd=maildir)
    keys = pending(maildir)
    if keys is not None:
        progress = remove(maildir, keys, fsync)
        if progress.failed:
            raise TemporaryFailure(f"maildir: unfinished deletion: {progress.error}")
