"""``[server] user``, ``group`` and ``run_as_root``: validation, the root check, and the drop.

The drop itself runs in a forked child (it cannot be undone, which is the point); the real
server's workers are checked in tests/server/test_privileges.py.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.support.dropped import USER, require_root

from mailslot import privileges, quickstart
from mailslot.cli import EX_CONFIG, main
from mailslot.config import ConfigError, ServerConfig, loads
from mailslot.privileges import PrivilegeError

BASE = """\
[[listener]]
address = "127.0.0.1"
port = 1110
tls = "none"

[auth]
passwd_file = "users"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[[str], Path]:
    (tmp_path / "users").write_text("")

    def write(server: str) -> Path:
        path = tmp_path / "mailslot.toml"
        path.write_text(BASE + "\n[server]\n" + server)
        return path

    return write


def as_euid(monkeypatch: pytest.MonkeyPatch, euid: int) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)


def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no user {USER!r} on this machine")


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "key", "words"),
    [
        ('user = ""', "server.user", "must not be empty"),
        ('user = "x"\ngroup = ""', "server.group", "must not be empty"),
        ('run_as_root = "  "', "server.run_as_root", "must say why"),
        ('group = "nogroup"', "server.group", "needs [server] user"),
        ('user = "x"\nrun_as_root = "why"', "server.run_as_root", "not both"),
        ("user = 65534", "server.user", "must be a string"),
    ],
)
def test_static_problems(server: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(BASE + "\n[server]\n" + server + "\n", check_files=False)
    (problem,) = info.value.problems
    assert problem.key == key
    assert words in problem.message
    assert problem.line is not None


def test_root_without_user_is_a_problem_only_for_root() -> None:
    (problem,) = privileges.problems(ServerConfig(), euid=0)
    assert problem.key == "server.user"
    assert "started as root without [server] user" in str(problem)
    assert privileges.problems(ServerConfig(run_as_root="a reason"), euid=0) == []
    assert privileges.problems(ServerConfig(), euid=1000) == []


def test_unknown_accounts_and_root_accounts_are_problems() -> None:
    name = nobody().pw_name
    (unknown,) = privileges.problems(ServerConfig(user="no-such-user-mailslot"), euid=0)
    assert (unknown.key, "no such user") == ("server.user", str(unknown)[:12])
    (group,) = privileges.problems(ServerConfig(user=name, group="no-such-group-ms"), euid=0)
    assert group.key == "server.group"
    assert 'no such group "no-such-group-ms"' in str(group)
    (root,) = privileges.problems(ServerConfig(user="root", group=_group_of(name)), euid=0)
    assert "is root (uid 0)" in str(root)
    (wheel,) = privileges.problems(ServerConfig(user=name, group="root"), euid=0)
    assert (wheel.key, "gid 0" in str(wheel)) == ("server.group", True)
    # Checked whoever runs check-config: the names must exist on this machine.
    assert privileges.problems(ServerConfig(user="no-such-user-mailslot"), euid=1000) != []


def _group_of(user: str) -> str:
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


def test_group_defaults_to_the_primary_group() -> None:
    account = nobody()
    require_root()
    identity = privileges.target(ServerConfig(user=account.pw_name))
    assert identity is not None
    assert (identity.uid, identity.gid, identity.group) == (
        account.pw_uid,
        account.pw_gid,
        _group_of(account.pw_name),
    )


# -- the drop, in a forked child -------------------------------------------------------------


def in_child(action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``action`` in a forked child (a drop cannot be undone); its result as JSON."""
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(readable)
            try:
                result = action()
            except Exception as exc:
                result = {"error": type(exc).__name__, "message": str(exc)}
            os.write(writable, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writable)
    with os.fdopen(readable, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: dict[str, Any] = json.loads(data)
    return result


def test_drop_clears_groups_sets_ids_and_cannot_be_undone() -> None:
    require_root()
    account = nobody()

    def drop() -> dict[str, Any]:
        os.setgroups([0, 4])  # supplementary groups a root shell may have
        privileges.drop(privileges.target(ServerConfig(user=account.pw_name)))
        try:
            os.setuid(0)
            regained = True
        except PermissionError:
            regained = False
        try:
            os.setgroups([0])
            groups_regained = True
        except PermissionError:
            groups_regained = False
        umask = os.umask(0)
        return {
            "uids": os.getresuid(),
            "gids": os.getresgid(),
            "groups": os.getgroups(),
            "regained": regained,
            "groups_regained": groups_regained,
            "umask": umask,
            "home": os.environ["HOME"],
        }

    result = in_child(drop)
    assert result == {
        "uids": [account.pw_uid] * 3,
        "gids": [account.pw_gid] * 3,
        "groups": [],
        "regained": False,
        "groups_regained": False,
        "umask": 0o077,
        "home": account.pw_dir,
    }


def test_a_dropped_process_cannot_become_another_user() -> None:
    require_root()
    account = nobody()

    def switch() -> dict[str, Any]:
        privileges.drop(privileges.target(ServerConfig(user=account.pw_name)))
        privileges.target(ServerConfig(user="daemon"))
        return {}

    result = in_child(switch)
    assert result["error"] == "PrivilegeError"
    assert "cannot become daemon" in result["message"]
    assert "only root can change its user" in result["message"]


def test_verify_refuses_a_process_that_is_not_what_it_should_be() -> None:
    require_root()
    account = nobody()
    identity = privileges.Identity(
        account.pw_name, account.pw_uid, "g", account.pw_gid, account.pw_dir
    )

    def half_dropped() -> dict[str, Any]:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.seteuid(account.pw_uid)  # effective only: the saved uid is still 0
        try:
            privileges.verify(identity)
        except PrivilegeError as exc:
            return {"error": str(exc)}
        return {}

    assert "dropping privileges left" in in_child(half_dropped)["error"]


def test_a_process_already_running_as_the_user_only_sets_its_umask() -> None:
    account = nobody() if os.geteuid() == 0 else None

    def already() -> dict[str, Any]:
        if account is not None:  # become someone else than root first, by hand
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
        identity = privileges.Identity("me", os.getuid(), "g", os.getgid(), "/")
        before = (os.getresuid(), os.getresgid(), os.getgroups())
        os.umask(0o022)
        privileges.drop(identity)
        after = (os.getresuid(), os.getresgid(), os.getgroups())
        return {"umask": os.umask(0), "unchanged": before == after}

    assert in_child(already) == {"umask": 0o077, "unchanged": True}


# -- check-config and serve ------------------------------------------------------------------


def test_check_config_refuses_root_without_user(
    config_file: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    as_euid(monkeypatch, 0)
    path = config_file('hostname = "mail.example.org"\n')
    assert main(["check-config", "--config", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(
        f"{path}:9: server.user: mailslot was started as root without [server] user"
    )
    assert err.endswith("1 problem in the configuration\n")
    # As anyone else, the same file is fine: the server would serve as that account.
    as_euid(monkeypatch, 1000)
    assert main(["check-config", "--config", str(path)]) == 0


def test_check_config_names_the_line_of_an_unknown_user(
    config_file: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    as_euid(monkeypatch, 0)
    path = config_file('workers = 2\nuser = "no-such-user-mailslot"\n')
    assert main(["check-config", "--config", str(path)]) == EX_CONFIG
    assert capsys.readouterr().err.startswith(
        f'{path}:11: server.user: no such user "no-such-user-mailslot"'
    )


def test_check_config_accepts_a_user_or_a_reason(
    config_file: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    as_euid(monkeypatch, 0)
    # This file lies in pytest's 0700 tree; whether the user reads it is tested with a real
    # drop in tests/server/test_privileges.py.
    monkeypatch.setattr(privileges, "unreadable", lambda identity, paths: [])
    name = nobody().pw_name
    assert main(["check-config", "--config", str(config_file(f'user = "{name}"\n'))]) == 0
    path = config_file('run_as_root = "a container with no other account"\n')
    assert main(["check-config", "--config", str(path)]) == 0


def test_serve_refuses_root_without_user_before_running(
    config_file: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    as_euid(monkeypatch, 0)
    ran: list[object] = []
    monkeypatch.setattr("mailslot.server.runner.run", ran.append)
    assert main(["serve", "--config", str(config_file(""))]) == EX_CONFIG
    assert ran == []
    assert "server.user: mailslot was started as root" in capsys.readouterr().err


# -- the quick start -------------------------------------------------------------------------


@pytest.mark.parametrize("as_root", [True, False])
def test_quick_start_config_is_accepted_by_whoever_runs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_root: bool
) -> None:
    as_euid(monkeypatch, 0 if as_root else 1000)
    start = quickstart.prepare(tmp_path / "data")
    text = start.config_path.read_text()
    assert ("run_as_root = " in text) is as_root
    config = loads(text, start.config_path)
    assert privileges.problems(config.server) == []
    if as_root:
        assert config.server.run_as_root == "quick start run as root: a local trial on 127.0.0.1"
        assert f"chown -R NAME {start.data_dir}" in text
