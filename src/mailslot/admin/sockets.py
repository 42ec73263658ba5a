"""The admin socket on disk: made safely, found safely, and who is on the other end.

- **Made by the process that starts the server**, before any worker exists and before it drops
  privileges: the socket file belongs to that user (root in production) with mode 0600, so
  only root and that user can connect (unix(7): connecting needs write permission on the
  socket file).  Each connection's credentials (``SO_PEERCRED``) are checked again on accept.
- **No symlink is followed.**  A name that exists is replaced only when it is a socket that no
  server answers any more (a server killed with SIGKILL leaves one); a symlink, a file or a
  live socket there is an error.  The socket is bound and connected through a descriptor of
  its directory (``/proc/self/fd/N/NAME``), which also lifts the 108-octet limit of
  ``sun_path`` for deep directories.
- **Workers' own sockets** (several workers only) live in ``NAME.workers/`` beside it, a 0700
  directory of the user the workers run as: one socket per worker, named by its pid, which the
  worker that takes an admin request connects to to ask the others (the fan-out).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_SOCKET",
    "AdminEndpoints",
    "AdminSocketError",
    "bind_admin_socket",
    "connect",
    "peer_credentials",
    "peer_directory",
    "remove",
]

#: Where the admin socket is when ``[admin] socket`` is not set.
DEFAULT_SOCKET = Path("/run/mailslot/admin.sock")
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class AdminSocketError(OSError):
    """The admin socket cannot be made (the message says why and where)."""


@dataclass(frozen=True, slots=True)
class AdminEndpoints:
    """What the starting process made for the workers' admin servers.

    ``owner``: the uid allowed besides root; ``group``: a gid whose members are allowed too
    (``[admin] group``).  ``control``: the write end of the pipe to the
    supervisor (several workers), else ``None``: a lone worker signals itself; ``commands``
    its read end, the supervisor's.
    """

    listening: socket.socket
    path: Path
    owner: int
    peers: Path | None = None
    control: int | None = None
    commands: int | None = None
    group: int | None = None

    def allows(self, sock: socket.socket) -> tuple[bool, int, int]:
        """Whether the peer of ``sock`` may use the admin socket; and its pid and uid."""
        pid, uid, gid = peer_credentials(sock)
        if uid in (0, self.owner):
            return True, pid, uid
        if self.group is not None and (gid == self.group or self.group in peer_groups(sock)):
            return True, pid, uid
        return False, pid, uid


@contextlib.contextmanager
def _directory(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _at(directory: int, name: str) -> str:
    return f"/proc/self/fd/{directory}/{name}"


def bind_admin_socket(path: Path, group: int | None = None) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600, owned by this process's user; with
    ``group`` (a gid), mode 0660 and that group.

    The directory is made (0755) when it is missing and its parent exists (``/run/mailslot``).
    Raises :class:`AdminSocketError` when ``path`` is taken.
    """
    parent = path.parent
    if not parent.is_dir():
        try:
            parent.mkdir()
            parent.chmod(0o755)  # whatever the umask: the workers pass through it
        except OSError as exc:
            raise AdminSocketError(exc.errno, f"cannot create {parent}: {exc.strerror}") from None
    with _directory(parent) as directory:
        _clear_stale(directory, path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind() makes the file with mode 0777 & ~umask: no moment where it is open to all.
            old = os.umask(0o177 if group is None else 0o117)
            try:
                sock.bind(_at(directory, path.name))
            finally:
                os.umask(old)
            if group is not None:
                os.chown(path.name, -1, group, dir_fd=directory, follow_symlinks=False)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise AdminSocketError(exc.errno, f"cannot bind {path}: {exc.strerror}") from None
    return sock


def _clear_stale(directory: int, path: Path) -> None:
    try:
        info = os.stat(path.name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise AdminSocketError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(_at(directory, path.name))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # no server behind it any more
    except OSError as exc:
        raise AdminSocketError(exc.errno, f"cannot check {path}: {exc.strerror}") from None
    else:
        raise AdminSocketError(errno.EADDRINUSE, f"{path} is the admin socket of a running server")
    finally:
        probe.close()
    os.unlink(path.name, dir_fd=directory)


def remove(path: Path) -> None:
    """Remove the socket at ``path`` as the server stops (a symlink or file there stays).

    No other server can have taken the name meanwhile: :func:`bind_admin_socket` refuses a
    name a live server answers on.
    """
    with contextlib.suppress(OSError), _directory(path.parent) as directory:
        info = os.stat(path.name, dir_fd=directory, follow_symlinks=False)
        if stat.S_ISSOCK(info.st_mode):
            os.unlink(path.name, dir_fd=directory)


def peer_directory(path: Path, uid: int, gid: int) -> Path:
    """``NAME.workers/`` beside the admin socket, 0700, ``uid``'s, emptied of old sockets."""
    peers = path.with_name(path.name + ".workers")
    try:
        os.mkdir(peers, 0o700)
    except FileExistsError:
        info = os.lstat(peers)
        if not stat.S_ISDIR(info.st_mode):
            raise AdminSocketError(errno.EEXIST, f"{peers} exists and is not a directory") from None
    with _directory(peers) as directory:
        os.fchown(directory, uid, gid)
        os.fchmod(directory, 0o700)
        for name in os.listdir(directory):
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=directory)
    return peers


def remove_peer_directory(peers: Path) -> None:
    with contextlib.suppress(OSError):
        with _directory(peers) as directory:
            for name in os.listdir(directory):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=directory)
        os.rmdir(peers)


def bind_peer(peers: Path, pid: int) -> socket.socket:
    """This worker's own socket in ``peers``, mode 0600."""
    with _directory(peers) as directory:
        name = str(pid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=directory)  # a pid reused after a SIGKILL
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                sock.bind(_at(directory, name))
            finally:
                os.umask(old)
            sock.listen(16)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
    return sock


class NotOwned(AdminSocketError):
    """The socket file belongs to a user the caller does not trust."""


def connect(
    path: Path, timeout: float | None = None, owners: set[int] | None = None
) -> socket.socket:
    """A connected socket to the Unix socket at ``path``; the last component must be a socket,
    not a symlink to one, and with ``owners`` belong to one of those uids.

    The file's owner is what says who made the socket: ``SO_PEERCRED`` on the connecting side
    names whoever last called listen() on it, and asyncio calls it again in each worker, which
    may have dropped its privileges.  Raises FileNotFoundError, PermissionError,
    ConnectionRefusedError, :class:`AdminSocketError`, :class:`NotOwned`."""
    with _directory(path.parent) as directory:
        info = os.stat(path.name, dir_fd=directory, follow_symlinks=False)
        if not stat.S_ISSOCK(info.st_mode):
            raise AdminSocketError(errno.ENOTSOCK, f"{path} is not a socket")
        if owners is not None and info.st_uid not in owners:
            raise NotOwned(errno.EPERM, f"{path} belongs to uid {info.st_uid}, not to root or you")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(_at(directory, path.name))
        except BaseException:
            sock.close()
            raise
    return sock


_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13, socket(7)


def peer_groups(sock: socket.socket) -> list[int]:
    """The supplementary groups of the process on the other end (``SO_PEERGROUPS``)."""
    size = 4 * 1024
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
    except OSError:
        return []
    count = len(data) // 4
    return list(struct.unpack(f"{count}I", data[: count * 4]))


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process on the other end (unix(7), ``SO_PEERCRED``)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    pid, uid, gid = _CREDENTIALS.unpack(data)
    return pid, uid, gid
