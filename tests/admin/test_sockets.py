"""Making the admin socket on a real file system: mode 0600, no symlink followed, a stale
socket replaced, a live one left to its server; and reading /proc/locks."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from mailslot.admin.mailbox import flock_holders
from mailslot.admin.sockets import (
    AdminSocketError,
    NotOwned,
    bind_admin_socket,
    connect,
    peer_credentials,
    peer_directory,
    remove,
)


def test_the_socket_is_made_0600_and_answers(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with bind_admin_socket(path) as listening:
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
        with connect(path, 5) as client:
            listening.setblocking(True)
            accepted, _ = listening.accept()
            with accepted:
                assert peer_credentials(accepted)[:2] == (os.getpid(), os.geteuid())
                assert peer_credentials(client)[1] == os.geteuid()
    remove(path)
    assert not path.exists()


def test_a_deep_directory_beyond_sun_path_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "admin.sock"
    assert len(str(path)) > 108
    with bind_admin_socket(path), connect(path, 5):
        pass


def test_the_directory_is_made_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "run" / "admin.sock"
    with bind_admin_socket(path):
        assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755


def test_a_symlink_or_file_at_the_path_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep\n")
    link = tmp_path / "admin.sock"
    link.symlink_to(target)
    with pytest.raises(AdminSocketError, match="not a socket"):
        bind_admin_socket(link)
    assert link.is_symlink() and target.read_text() == "keep\n"
    remove(link)
    assert link.is_symlink()
    with pytest.raises(AdminSocketError, match="not a socket"):
        connect(link)


def test_a_symlink_to_a_live_socket_is_not_connected_to(tmp_path: Path) -> None:
    real = tmp_path / "real.sock"
    link = tmp_path / "admin.sock"
    with bind_admin_socket(real):
        link.symlink_to(real)
        with pytest.raises(AdminSocketError, match="not a socket"):
            connect(link)


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # what a server killed with SIGKILL leaves
    with bind_admin_socket(path):
        with pytest.raises(AdminSocketError, match="running server"):
            bind_admin_socket(path)
        assert stat.S_ISSOCK(path.lstat().st_mode)


def test_the_workers_directory_is_private_and_emptied(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    (tmp_path / "admin.sock.workers").mkdir()
    old.bind(str(tmp_path / "admin.sock.workers" / "123"))
    old.close()
    peers = peer_directory(path, os.geteuid(), os.getegid())
    assert stat.S_IMODE(peers.stat().st_mode) == 0o700
    assert list(peers.iterdir()) == []


PROC_LOCKS = """\
1: POSIX  ADVISORY  READ 20753 fe:00:5334509 128 128
2: FLOCK  ADVISORY  WRITE 4242 08:01:56789 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4343 08:01:56789 0 EOF
3: FLOCK  ADVISORY  WRITE 777 08:01:5678 0 EOF
"""


def test_flock_holders_reads_proc_locks() -> None:
    device = os.makedev(8, 1)
    assert flock_holders(device, 56789, PROC_LOCKS) == [4242]
    assert flock_holders(device, 5334509, PROC_LOCKS) == []


def test_flock_holders_sees_a_real_lock(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / "lock"
    with path.open("w") as file:
        info = os.fstat(file.fileno())
        assert flock_holders(info.st_dev, info.st_ino) == []
        fcntl.flock(file, fcntl.LOCK_EX)
        assert flock_holders(info.st_dev, info.st_ino) == [os.getpid()]


def test_a_socket_of_another_user_gets_no_request(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with bind_admin_socket(path):
        with pytest.raises(NotOwned, match="belongs to uid"):
            connect(path, 5, {os.geteuid() + 1})
        with connect(path, 5, {os.geteuid()}):
            pass


def test_the_directory_is_0755_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)  # systemd's UMask=0077
    try:
        with bind_admin_socket(tmp_path / "run" / "admin.sock"):
            assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
    finally:
        os.umask(old)
