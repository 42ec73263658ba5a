"""Small file-system steps the Maildir backend repeats: atomic replace, directory fsync.

A maildir may belong to the user while the server runs with more privilege, so our own
files are never opened through a symlink (``O_NOFOLLOW``) and temporary files are created
with ``O_EXCL``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable

Fsync = Callable[[int], None]

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def read_own_file(path: str) -> bytes | None:
    """Return the contents of one of our metadata files, or None if absent or not regular."""
    try:
        fd = os.open(path, _READ_FLAGS)
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


def lexists(path: str) -> bool:
    """Whether ``path`` exists, without following a final symlink (as os.path.lexists).

    One faccessat() that returns no stat buffer: about half the cost of os.path.lexists, and
    it runs several times per login.
    """
    return os.access(path, os.F_OK, follow_symlinks=False)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_file(path: str, data: bytes, fsync: Fsync | None = None) -> None:
    """Write ``data`` to ``path`` atomically via ``path.tmp``; fsync the data if asked.

    The caller fsyncs the directory when the rename itself must be durable.
    """
    tmp = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, _CREATE_FLAGS, 0o600)
    try:
        try:
            write_all(fd, data)
            if fsync is not None:
                fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_directory(path: str, fsync: Fsync) -> None:
    """Make renames and unlinks in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(fd)
    finally:
        os.close(fd)
