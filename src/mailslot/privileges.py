"""Serving as an unprivileged account: whom to become, and becoming it for good.

A server started as root does as root only what needs root: it binds the listening sockets
(ports below 1024, a Unix socket in a root-owned directory) and reads the TLS key; then every
process that talks to a client, reads a passwd-file or writes a Maildir runs as ``[server]
user`` and ``group`` (docs/configuration.md, ``[server]``), so a bug in that code reaches that
account's files, not the whole host.  Root without a ``user`` is refused unless ``run_as_root``
says why.

The drop follows POSIX.1's setgroups(2)/setgid(2)/setuid(2) order: the supplementary groups
first and the group next, both of which need root, then the user, after which nothing can be
changed back.  As root, ``setgid`` and ``setuid`` set the real, effective and saved ids
alike, so no saved id is left to return to; the drop is then checked, and a process that could
still become root again stops rather than serve.  The umask becomes 077: whatever a dropped
process creates is its own and private.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from mailslot.config import ServerConfig

#: Files 0600 and directories 0700 unless created with a narrower mode; the Maildir code asks
#: for exactly those, the umask covers anything else a dropped process creates.
UMASK = 0o077


@dataclass(frozen=True, slots=True)
class Identity:
    """The account a process runs as after :func:`drop`."""

    user: str
    uid: int
    group: str
    gid: int
    home: str


class PrivilegeError(Exception):
    """The configuration cannot be served as it says; ``key`` is the setting to change."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def problems(server: ServerConfig, euid: int | None = None) -> list[PrivilegeError]:
    """Everything wrong with ``server``'s identity for a process whose effective uid is
    ``euid`` (default: this one's), for ``check-config``, ``serve`` and ``deliver``.

    Only a root process may switch to another account; a process that is not root serves as
    itself, so for it ``user`` is only checked to exist.
    """
    euid = os.geteuid() if euid is None else euid
    found: list[PrivilegeError] = []
    if server.user is None:
        if euid == 0 and server.run_as_root is None:
            found.append(
                PrivilegeError(
                    "server.user",
                    "mailslot was started as root without [server] user: set user = "
                    '"NAME" (an unprivileged account that owns the Maildirs and can read the '
                    'passwd-file), or run_as_root = "REASON" to serve as root anyway',
                )
            )
        return found
    try:
        identity = _lookup(server)
    except PrivilegeError as exc:
        return [exc]
    if identity.uid == 0:
        found.append(
            PrivilegeError(
                "server.user",
                f'"{identity.user}" is root (uid 0); name an unprivileged account, or write '
                'run_as_root = "REASON" instead of user',
            )
        )
    if identity.gid == 0:
        found.append(
            PrivilegeError(
                "server.group" if server.group is not None else "server.user",
                f'group "{identity.group}" is gid 0, which can read what root\'s group can; '
                "name an unprivileged group",
            )
        )
    return found


def target(server: ServerConfig) -> Identity | None:
    """The account this process should serve as; ``None`` to stay as it is (not root, or
    root with ``run_as_root``).  Raises :class:`PrivilegeError` with the first problem."""
    found = problems(server)
    if found:
        raise found[0]
    if server.user is None:
        return None
    identity = _lookup(server)
    euid = os.geteuid()
    if euid != 0 and (euid != identity.uid or os.getegid() != identity.gid):
        raise PrivilegeError(
            "server.user",
            f"cannot become {identity.user}:{identity.group} (uid {identity.uid}, gid "
            f"{identity.gid}): mailslot runs as uid {euid}, and only root can change its user; "
            "start it as root, or as that account",
        )
    return identity


def _lookup(server: ServerConfig) -> Identity:
    assert server.user is not None
    try:
        account = pwd.getpwnam(server.user)
    except KeyError:
        raise PrivilegeError(
            "server.user",
            f'no such user "{server.user}" in the user database (getent passwd '
            f"{server.user}); create it, e.g. useradd --system --home-dir /var/mail "
            f"--shell /usr/sbin/nologin {server.user}",
        ) from None
    if server.group is None:
        gid = account.pw_gid
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    else:
        try:
            gid = grp.getgrnam(server.group).gr_gid
        except KeyError:
            raise PrivilegeError(
                "server.group", f'no such group "{server.group}" (getent group {server.group})'
            ) from None
        group = server.group
    return Identity(server.user, account.pw_uid, group, gid, account.pw_dir)


def drop(identity: Identity | None) -> None:
    """Become ``identity`` for good: no supplementary groups, its group, its user, umask 077.

    A process that already runs as ``identity`` (started by that account) only sets the
    umask.  Raises :class:`PrivilegeError` if any step fails or root can be regained; the
    caller must then exit without serving.
    """
    if identity is None:
        return
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(identity.gid)
            os.setuid(identity.uid)
        except OSError as exc:
            raise PrivilegeError(
                "server.user",
                f"cannot become {identity.user}:{identity.group}: {exc.strerror or exc}",
            ) from None
        verify(identity)
        # Libraries that look for a home directory or a user name find the account's.
        os.environ.update(HOME=identity.home, USER=identity.user, LOGNAME=identity.user)
    os.umask(UMASK)


def unreadable(identity: Identity, paths: list[Path]) -> list[Path]:
    """Which of ``paths`` ``identity`` could not read, asked by a child that becomes it (so
    that directories on the way, groups and ACLs count exactly as they will for the server).
    For root only: any other process can only ask about itself."""
    if os.geteuid() != 0 or not paths:
        return []
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result arrives through the pipe
        code = 1
        try:
            os.close(readable)
            drop(identity)
            answer = "".join("1" if os.access(path, os.R_OK) else "0" for path in paths)
            os.write(writable, answer.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writable)
    with os.fdopen(readable, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    if len(answer) != len(paths):  # the child could not drop: drop() will say why
        return []
    return [path for path, ok in zip(paths, answer, strict=True) if ok == "0"]


def verify(identity: Identity) -> None:
    """Check that the drop took and cannot be undone (CERT POS37-C)."""
    ids = (os.getresuid(), os.getresgid(), os.getgroups())
    wanted: tuple[tuple[int, int, int], tuple[int, int, int], list[int]] = (
        (identity.uid,) * 3,
        (identity.gid,) * 3,
        [],
    )
    if ids != wanted:
        raise PrivilegeError(
            "server.user", f"dropping privileges left uids/gids/groups {ids}, not {wanted}"
        )
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("server.user", "the process could become root again after the drop")
