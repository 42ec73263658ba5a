"""Editing a passwd-file: the functions behind ``mailslot user add|passwd|delete|list``.

Every change rewrites the whole file atomically: the new contents go to a temporary file in
the same directory, which is fsynced and renamed over the old one, then the directory is
fsynced, so a running server (which re-reads on a changed inode, see
:mod:`mailslot.auth.passwdfile`) sees either the old file or the new one, never half of one.
Concurrent editors serialise on an exclusive ``flock`` of ``<path>.lock``; the file itself is
never locked because the rename replaces it.

Comments, blank lines, other users' lines and every field after the password are kept byte
for byte; the file keeps its mode and owner (a new file is created 0600).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mailslot.auth import schemes, usernames
from mailslot.auth.passwdfile import parse_entry

__all__ = [
    "AdminError",
    "NoSuchUser",
    "UserExists",
    "add_user",
    "delete_user",
    "list_users",
    "set_password",
]

_NEW_FILE_MODE = 0o600
_NEW_DIRECTORY_MODE = 0o755
_FORBIDDEN_IN_HOME = frozenset(":\r\n\x00")


class AdminError(Exception):
    """Base class of the errors the user-administration functions raise."""


class UserExists(AdminError):
    """``add_user`` for a name already in the file."""

    def __init__(self, name: str) -> None:
        super().__init__(f"user {usernames.for_log(name)} already exists")
        self.name = name


class NoSuchUser(AdminError):
    """``set_password`` or ``delete_user`` for a name not in the file."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no such user: {usernames.for_log(name)}")
        self.name = name


def add_user(
    path: Path, name: str, password: str, scheme: str = "ARGON2ID", home: str | None = None
) -> None:
    """Append ``name:{SCHEME}hash`` (plus ``::::home`` if given); UserExists if present."""
    usernames.validate(name)
    if home is not None and (not home or _FORBIDDEN_IN_HOME & set(home)):
        raise ValueError("home must be non-empty and hold no ':', CR, LF or NUL")
    # Hash before taking the lock: argon2 is slow and other editors need not wait for it.
    fields = [name, schemes.hash_password(password, scheme)]
    if home is not None:
        fields += ["", "", "", home]
    line = ":".join(fields).encode("utf-8")
    # A new file may be the first in its directory (/etc/mailslot): make the directories,
    # 0755 like the rest of /etc, as the file itself is 0600.
    path.parent.mkdir(mode=_NEW_DIRECTORY_MODE, parents=True, exist_ok=True)
    with _locked(path):
        lines, mode, owner = _read(path)
        if _find(lines, name) is not None:
            raise UserExists(name)
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        lines.append(line + _newline(lines))
        _write(path, lines, mode, owner)


def set_password(path: Path, name: str, password: str, scheme: str = "ARGON2ID") -> None:
    """Replace ``name``'s password field, keeping the rest of its line; NoSuchUser if absent."""
    usernames.validate(name)
    stored = schemes.hash_password(password, scheme).encode("utf-8")
    with _locked(path, name):
        lines, mode, owner = _read(path)
        index = _find(lines, name)
        if index is None:
            raise NoSuchUser(name)
        body, ending = _split_ending(lines[index])
        fields = body.split(b":")
        fields[1] = stored
        lines[index] = b":".join(fields) + ending
        _write(path, lines, mode, owner)


def delete_user(path: Path, name: str) -> None:
    """Remove ``name``'s line; NoSuchUser if absent."""
    usernames.validate(name)
    with _locked(path, name):
        lines, mode, owner = _read(path)
        index = _find(lines, name)
        if index is None:
            raise NoSuchUser(name)
        del lines[index]
        _write(path, lines, mode, owner)


def list_users(path: Path) -> list[str]:
    """The user names in file order (malformed lines skipped); empty if there is no file."""
    lines, _, _ = _read(path)
    names: list[str] = []
    for raw in lines:
        try:
            entry = parse_entry(_split_ending(raw)[0].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if entry is not None:
            names.append(entry.name)
    return names


@contextlib.contextmanager
def _locked(path: Path, name: str | None = None) -> Iterator[None]:
    """Hold the editors' lock; with ``name``, a missing directory means no such user."""
    if name is not None and not path.parent.is_dir():
        raise NoSuchUser(name)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _NEW_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _read(path: Path) -> tuple[list[bytes], int, tuple[int, int] | None]:
    """Lines with their endings, the mode to keep, and the owner to keep (None: new file)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return [], _NEW_FILE_MODE, None
    # Split on LF only: a stray CR inside a line is that line's business, not a line break.
    lines = [piece + b"\n" for piece in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    return lines, st.st_mode & 0o7777, (st.st_uid, st.st_gid)


def _split_ending(line: bytes) -> tuple[bytes, bytes]:
    for ending in (b"\r\n", b"\n"):
        if line.endswith(ending):
            return line[: -len(ending)], ending
    return line, b""


def _newline(lines: list[bytes]) -> bytes:
    """Follow the file's own line ending, so a CRLF file stays CRLF."""
    return b"\r\n" if lines and lines[0].endswith(b"\r\n") else b"\n"


def _find(lines: list[bytes], name: str) -> int | None:
    """Index of the user line for ``name``, compared on the raw first field."""
    wanted = name.encode("utf-8")
    for index, raw in enumerate(lines):
        body, _ = _split_ending(raw)
        if not body.strip() or body.startswith(b"#"):
            continue
        if body.split(b":", 1)[0] == wanted:
            return index
    return None


def _write(path: Path, lines: list[bytes], mode: int, owner: tuple[int, int] | None) -> None:
    # Replace the symlink's target, not the link: a symlinked passwd-file stays a symlink.
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.writelines(lines)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                # Only root can give a file away; for anyone else the owner is already right.
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), *owner)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a crash
    finally:
        os.close(dir_fd)
