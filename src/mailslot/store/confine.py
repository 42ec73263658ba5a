"""Confined access below a maildrop's root: no symlink is followed at any component.

A mail user who owns their Maildir (``~/Maildir``, or a ``/var/mail/{user}`` handed to them)
can replace any directory in it by a symlink, and the server, which may run as root, would
follow it: list, serve and delete the files of ``/etc`` through ``cur -> /etc``.  ``O_NOFOLLOW``
guards only the last component of a path, so paths are not used below the root at all.

The *root* is the part of the ``[store] maildir`` template the administrator wrote: the
leading directories before the first ``{user}``, ``{localpart}``, ``{domain}``, ``{home}`` or
``~``.  It is resolved as any path is (an administrator's own symlinks keep working).  Every
component from the first expanded one on (the home directory's path included, since its
owner may control it, and the Maildir itself) is opened with ``O_NOFOLLOW | O_DIRECTORY``
relative to its parent's descriptor, one at a time, as ``openat(2)`` walks do; the files in it
(messages, the lock, the size cache, the expunge journal) are opened, renamed, unlinked and
stat'ed relative to the descriptor of their directory, never by path.  A component that is a
symlink or not a directory is :class:`NotADirectory`, a :class:`PermanentFailure`
(``[SYS/PERM]``, RFC 3206 section 4) that names it.

A directory swapped for a symlink after it was opened changes nothing: the descriptor still
refers to the directory that was checked (moved or not), and the next walk refuses the
symlink.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass

from mailslot.log import escape
from mailslot.store.base import PermanentFailure
from mailslot.store.paths import expand

# Directories we list, fsync or create files in.
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Directories we only pass through: O_PATH needs search permission alone, as a path would.
_THROUGH = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PLACEHOLDERS = ("{user}", "{localpart}", "{domain}", "{home}")
SUBDIRECTORIES = ("cur", "new", "tmp")


class NotADirectory(PermanentFailure):
    """A component below the root is a symlink or not a directory (``[SYS/PERM]``)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"maildir: {escape(path, 400)} is not a directory")
        self.path = path


@dataclass(frozen=True, slots=True)
class Location:
    """Where a maildrop is: the root (resolved normally) and the components below it.

    ``path`` is the whole path, for logs and as a cache key (never opened as such).
    """

    root: str
    components: tuple[str, ...]
    path: str


def root_of(template: str) -> str:
    """The leading directories of ``template`` before anything is expanded into it."""
    if template.startswith("~"):
        return "/"
    first = min((i for p in _PLACEHOLDERS if (i := template.find(p)) >= 0), default=len(template))
    return template[: template.rfind("/", 0, first) + 1] or "/"


def locate(template: str, user: str, home: str | None, root: str | None = None) -> Location:
    """Expand ``template`` (raises :class:`PermanentFailure` if unsafe) and split off its root.

    ``root`` is :func:`root_of` the template, if the caller keeps it (it runs at every login).
    """
    path = expand(template, user, home)
    if root is None:
        root = root_of(template)
    # The root holds no placeholder, so it is a prefix of the expansion (~/ becomes {home}/).
    assert path.startswith(root), (path, root)
    rest = path[len(root) :].split("/")
    return Location(root, tuple(c for c in rest if c not in ("", ".")), path)


def _makedirs(path: str) -> None:
    # os.makedirs gives only the leaf our mode; every level we create is private.
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs(parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


def open_directory(
    parent: int,
    name: str,
    shown: str,
    *,
    create: bool = False,
    owner: tuple[int, int] | None = None,
) -> int:
    """Open the directory ``name`` in ``parent`` without following a symlink.

    ``shown`` names it in the error; with ``create`` a missing one is made (mode 0700),
    given to ``owner`` (uid, gid) if one is given.
    Raises :class:`NotADirectory`, FileNotFoundError (without ``create``) or OSError.
    """
    return _open(parent, name, shown, DIRECTORY, create, owner)


def _open(
    parent: int,
    name: str,
    shown: str,
    flags: int,
    create: bool,
    owner: tuple[int, int] | None = None,
) -> int:
    try:
        return os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise NotADirectory(shown) from None
        raise
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass
    else:
        if owner is not None:
            os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
    return _open(parent, name, shown, flags, False)


def open_maildir(
    location: Location, *, create: bool = False, owner: tuple[int, int] | None = None
) -> int:
    """A descriptor of the Maildir directory at ``location``, walked without symlinks.

    ``owner``: (uid, gid) given to each directory below the template's fixed part that is
    created here (the fixed part's own directories stay the server's).
    Raises :class:`NotADirectory`, FileNotFoundError (without ``create``) or OSError.
    """
    if create:
        _makedirs(location.root)
    if not location.components:  # a template of fixed directories only
        return os.open(location.root, DIRECTORY & ~os.O_NOFOLLOW)
    fd = os.open(location.root, _THROUGH & ~os.O_NOFOLLOW)
    try:
        shown = location.root.rstrip("/")
        last = len(location.components) - 1
        for i, name in enumerate(location.components):
            shown += "/" + name
            flags = DIRECTORY if i == last else _THROUGH
            next_fd = _open(fd, name, shown, flags, create, owner)
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_directory(parent: int, name: str, shown: str) -> None:
    """Raise :class:`NotADirectory` unless ``name`` in ``parent`` is a real directory.

    FileNotFoundError if it is missing.
    """
    if not stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
        raise NotADirectory(shown)
