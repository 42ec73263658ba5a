"""Small file-system steps the Maildir backend repeats: atomic replace, reads of our own files.

A maildir may belong to the user while the server runs with more privilege, so every call
here takes the descriptor of the directory the file is in (:mod:`mailslot.store.confine`
opened it without following symlinks) and a bare name: our own files are never opened
through a symlink (``O_NOFOLLOW``) and temporary files are created with ``O_EXCL``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable

Fsync = Callable[[int], None]

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def read_own_file(directory: int, name: str) -> bytes | None:
    """Return the contents of one of our metadata files, or None if absent or not regular."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=directory)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def lexists(directory: int, name: str) -> bool:
    """Whether ``name`` exists in ``directory``, without following a symlink.

    One faccessat() that returns no stat buffer: about half the cost of an lstat, and it
    runs several times per login.
    """
    return os.access(name, os.F_OK, dir_fd=directory, follow_symlinks=False)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_file(
    directory: int,
    name: str,
    data: bytes,
    fsync: Fsync | None = None,
    *,
    temp: str | None = None,
    owner: tuple[int, int] | None = None,
    mode: int = 0o600,
) -> os.stat_result:
    """Write ``data`` to ``name`` atomically via ``temp`` (default ``name.tmp``); fsync the
    data if asked; return the new file's status.

    ``owner`` (uid, gid) and ``mode`` are set on the file before anything is written into
    it (a file mailslot writes as root into a mail user's directory stays that user's).  The
    caller fsyncs the directory when the rename itself must be durable.  A symlink at either
    name is replaced, never followed.
    """
    tmp = temp or name + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=directory)
    fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=directory)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            if mode != 0o600:
                os.fchmod(fd, mode)
            write_all(fd, data)
            if fsync is not None:
                fsync(fd)
            status = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=directory)
        raise
    return status
