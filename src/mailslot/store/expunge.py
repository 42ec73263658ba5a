"""The expunge journal: crash-safe, all-or-nothing removal of marked messages (RFC 1939 s. 6).

RFC 1939 section 6 has the UPDATE state remove every message marked as deleted.  Removing many
files is not atomic, so the keys are first written durably to ``<maildir>/.mailslot-expunge``;
then the files are unlinked and the directories fsynced, and only then is the journal removed.
Whoever opens the maildrop next finishes a journal left by a crash before taking its
snapshot.  A crash therefore removes every listed message (now or at the next open) or none,
and never one that is not listed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping

from mailslot.store import fsutil
from mailslot.store.fsutil import Fsync
from mailslot.store.maildirnames import base_of

JOURNAL = ".mailslot-expunge"
_VERSION = 1


def write(maildir: str, keys: Iterable[str], fsync: Fsync) -> None:
    """Durably record that ``keys`` are to be removed; nothing is removed yet."""
    # JSON escapes any character (even surrogate-escaped bytes of a file name) on one line.
    data = json.dumps({"version": _VERSION, "keys": list(keys)}).encode("ascii") + b"\n"
    path = os.path.join(maildir, JOURNAL)
    fsutil.replace_file(path, data, fsync)
    try:
        fsutil.fsync_directory(maildir, fsync)
    except OSError:
        # The caller reports failure, so the deletion must not happen later either.
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def pending(maildir: str) -> list[str] | None:
    """The keys of an unfinished journal, or None if there is none (or it is unreadable)."""
    path = os.path.join(maildir, JOURNAL)
    data = fsutil.read_own_file(path)
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
        os.replace(path, path + ".damaged")
        return None
    return list(keys)


def apply(
    maildir: str,
    keys: Iterable[str],
    fsync: Fsync,
    known_names: Mapping[str, str] | None = None,
) -> None:
    """Unlink every file of ``keys`` in cur/ and new/, make it durable, drop the journal.

    ``known_names`` maps a key to its path relative to the maildir as last seen (the snapshot),
    which saves a directory scan when no other program renamed the file meanwhile.
    """
    remaining = set(keys)
    if known_names:
        for key in list(remaining):
            relative = known_names.get(key)
            if relative is None:
                continue
            try:
                os.unlink(os.path.join(maildir, relative))
            except FileNotFoundError:
                continue
            remaining.discard(key)
    if remaining:
        for sub in ("cur", "new"):
            directory = os.path.join(maildir, sub)
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if not name.startswith(".") and base_of(name) in remaining:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(directory, name))
    for sub in ("cur", "new"):
        fsutil.fsync_directory(os.path.join(maildir, sub), fsync)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(maildir, JOURNAL))
    fsutil.fsync_directory(maildir, fsync)


def recover(maildir: str, fsync: Fsync) -> None:
    """Finish a journal left by an interrupted deletion, if there is one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(maildir, JOURNAL + ".tmp"))
    keys = pending(maildir)
    if keys is not None:
        apply(maildir, keys, fsync)
