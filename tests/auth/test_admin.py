"""passwd-file administration (mailslot.auth.admin): atomic rewrites that keep everything else."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import pytest

from mailslot.auth import schemes
from mailslot.auth.admin import (
    NoSuchUser,
    UserExists,
    add_user,
    delete_user,
    list_users,
    set_password,
)
from mailslot.auth.passwdfile import PasswdFileAuthenticator
from mailslot.auth.usernames import InvalidUsername

from .conftest import run

FAST = "SSHA512"  # a real salted hash that keeps these tests quick

ORIGINAL = (
    b"# users of example.org\n"
    b"\n"
    b"alice:{PLAIN}one:1000:1000:Alice:/home/alice:/bin/false:userdb_quota_rule=*:storage=1G\n"
    b"# bob is on leave\n"
    b"bob:{SSHA}S55XocB2CN/JntcidijpUAg4uh2M0F5D::::::nopassword=n allow_nets=10.0.0.0/8\n"
)


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    path.write_bytes(ORIGINAL)
    path.chmod(0o640)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def stored_of(path: Path, name: str) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.split(":", 1)[0] == name:
            return line.split(":")[1]
    raise AssertionError(f"{name} not in file")


def test_add_to_a_new_file_creates_it_0600(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    add_user(path, "alice", "wonderland")
    assert mode(path) == 0o600
    assert list_users(path) == ["alice"]
    assert stored_of(path, "alice").startswith("{ARGON2ID}$argon2id$v=19$")
    assert run(PasswdFileAuthenticator(path).authenticate("alice", "wonderland")).name == "alice"


def test_add_keeps_comments_other_lines_and_mode(passwd: Path) -> None:
    add_user(passwd, "carol", "three", scheme=FAST, home="/home/carol")
    data = passwd.read_bytes()
    assert data.startswith(ORIGINAL)
    new_line = data[len(ORIGINAL) :]
    assert new_line.startswith(b"carol:{SSHA512}") and new_line.endswith(b"::::/home/carol\n")
    assert mode(passwd) == 0o640
    assert list_users(passwd) == ["alice", "bob", "carol"]
    auth = PasswdFileAuthenticator(passwd)
    user = run(auth.authenticate("carol", "three"))
    assert (user.name, user.home) == ("carol", "/home/carol")


def test_add_existing_user_raises_and_leaves_the_file(passwd: Path) -> None:
    inode = os.stat(passwd).st_ino
    with pytest.raises(UserExists):
        add_user(passwd, "bob", "x", scheme=FAST)
    assert passwd.read_bytes() == ORIGINAL
    assert os.stat(passwd).st_ino == inode


def test_add_to_a_file_without_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(b"alice:{PLAIN}one")
    add_user(path, "bob", "two", scheme=FAST)
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == b"alice:{PLAIN}one"
    assert lines[1].startswith(b"bob:{SSHA512}")
    assert lines[2] == b""


def test_crlf_file_stays_crlf(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(b"# c\r\nalice:{PLAIN}one:1:1\r\n")
    add_user(path, "bob", "two", scheme=FAST)
    set_password(path, "alice", "uno", scheme=FAST)
    data = path.read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n") == 3
    assert data.startswith(b"# c\r\nalice:{SSHA512}")
    assert b":1:1\r\n" in data


def test_set_password_changes_only_that_field(passwd: Path) -> None:
    set_password(passwd, "alice", "uno", scheme=FAST)
    old_lines = ORIGINAL.split(b"\n")
    new_lines = passwd.read_bytes().split(b"\n")
    assert len(new_lines) == len(old_lines)
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
    assert changed == [2]
    old_fields, new_fields = old_lines[2].split(b":"), new_lines[2].split(b":")
    assert new_fields[0] == b"alice" and new_fields[2:] == old_fields[2:]
    assert schemes.verify("uno", new_fields[1].decode())
    assert mode(passwd) == 0o640


def test_set_password_defaults_to_argon2id(passwd: Path) -> None:
    set_password(passwd, "bob", "new")
    assert stored_of(passwd, "bob").startswith("{ARGON2ID}$argon2id$")


def test_set_password_of_unknown_user_raises(passwd: Path) -> None:
    with pytest.raises(NoSuchUser):
        set_password(passwd, "mallory", "x", scheme=FAST)
    assert passwd.read_bytes() == ORIGINAL


def test_delete_removes_only_that_line(passwd: Path) -> None:
    delete_user(passwd, "alice")
    expected = ORIGINAL.replace(ORIGINAL.split(b"\n")[2] + b"\n", b"")
    assert passwd.read_bytes() == expected
    assert list_users(passwd) == ["bob"]
    assert mode(passwd) == 0o640


def test_delete_unknown_user_raises(passwd: Path) -> None:
    with pytest.raises(NoSuchUser):
        delete_user(passwd, "mallory")
    with pytest.raises(NoSuchUser):
        delete_user(passwd, "users")  # a word from a comment is not a user
    assert passwd.read_bytes() == ORIGINAL


def test_list_users_skips_comments_and_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(b"# x:y\nalice:{PLAIN}a\nbroken\n../x:{PLAIN}b\n\xff:{PLAIN}c\nbob:{PLAIN}b\n")
    assert list_users(path) == ["alice", "bob"]
    assert list_users(tmp_path / "missing") == []


@pytest.mark.parametrize("name", ["../x", "a/b", "a:b", "a\nb", "a\x00b", "", "x" * 300])
def test_invalid_names_are_refused_everywhere(passwd: Path, name: str) -> None:
    with pytest.raises(InvalidUsername):
        add_user(passwd, name, "pw", scheme=FAST)
    with pytest.raises(InvalidUsername):
        set_password(passwd, name, "pw", scheme=FAST)
    with pytest.raises(InvalidUsername):
        delete_user(passwd, name)
    assert passwd.read_bytes() == ORIGINAL


@pytest.mark.parametrize("home", ["", "/home/a:b", "/home/a\nb:x"])
def test_home_that_would_break_the_line_is_refused(passwd: Path, home: str) -> None:
    with pytest.raises(ValueError):
        add_user(passwd, "carol", "pw", scheme=FAST, home=home)
    assert passwd.read_bytes() == ORIGINAL


def test_unknown_scheme_is_refused_before_touching_the_file(passwd: Path) -> None:
    with pytest.raises(ValueError):
        add_user(passwd, "carol", "pw", scheme="PLAIN")
    assert passwd.read_bytes() == ORIGINAL


def test_rewrite_is_a_rename_and_leaves_no_temporary_files(passwd: Path) -> None:
    inode = os.stat(passwd).st_ino
    add_user(passwd, "carol", "three", scheme=FAST)
    assert os.stat(passwd).st_ino != inode
    assert sorted(p.name for p in passwd.parent.iterdir()) == ["passwd", "passwd.lock"]


def test_lock_file_is_private_and_released(passwd: Path) -> None:
    add_user(passwd, "carol", "three", scheme=FAST)
    lock = passwd.parent / "passwd.lock"
    assert mode(lock) == 0o600
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if add_user still held it
    finally:
        os.close(fd)


def test_running_server_sees_admin_changes(passwd: Path) -> None:
    auth = PasswdFileAuthenticator(passwd)
    assert run(auth.authenticate("alice", "one")).name == "alice"
    set_password(passwd, "alice", "uno", scheme=FAST)
    assert run(auth.authenticate("alice", "uno")).name == "alice"
    delete_user(passwd, "alice")
    assert run(auth.lookup("alice")) is None


def test_symlinked_file_is_rewritten_through_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "passwd").write_bytes(ORIGINAL)
    link = tmp_path / "passwd"
    link.symlink_to(real / "passwd")
    add_user(link, "carol", "three", scheme=FAST)
    assert link.is_symlink()
    assert list_users(real / "passwd") == ["alice", "bob", "carol"]


def test_add_makes_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "mailslot" / "users"
    add_user(path, "alice", "wonderland")
    assert list_users(path) == ["alice"]
    assert mode(path) == 0o600
    for directory in (path.parent, path.parent.parent):
        assert mode(directory) == 0o755 & ~current_umask()


@pytest.mark.parametrize("change", ["passwd", "delete"])
def test_changes_in_a_missing_directory_name_the_user_not_the_lock(
    tmp_path: Path, change: str
) -> None:
    path = tmp_path / "missing" / "users"
    with pytest.raises(NoSuchUser, match="alice"):
        if change == "passwd":
            set_password(path, "alice", "x")
        else:
            delete_user(path, "alice")
    assert not path.parent.exists()


def current_umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
