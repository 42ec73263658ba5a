"""The admin socket against a real server with two workers: ``who``, ``kick``,
``mailbox status``, ``reload`` and ``stop`` through the real CLI, with poplib sessions over
real TLS on both workers, and the socket's permissions checked as an unprivileged user."""

from __future__ import annotations

import concurrent.futures
import grp
import json
import os
import poplib
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_postgresql import lmtp_deliver, node, upgraded
from tests.support import dropped
from tests.support.maildir import message_files
from tests.support.passwd import PasswdUser
from tests.support.postgres import PostgresServer
from tests.support.server import STOP_DEADLINE, Listener, MailslotServer, ServerFactory
from tests.support.tls import TlsFiles

from mailslot.admin.client import call
from mailslot.admin.protocol import Request

USERS = tuple(PasswdUser(f"user{n}", f"secret-{n}") for n in range(16))
MESSAGE = b"From: a@example.org\nSubject: hello\n\nhello\n"
DEADLINE = 15.0  # polling for workers to come and go; not a threshold


def cli(
    *args: str, user: str | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mailslot", *args]
    env = dict(os.environ)
    if user is not None:
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
        assert runuser is not None  # dropped.require_importable_as() checked
        command = [runuser, "-u", user, "--", *command]
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=env, cwd="/"
    )


def who(server: MailslotServer) -> list[dict[str, Any]]:
    result = cli("who", "--config", str(server.config_path), "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["unreachable"] == [], result.stderr + server.log()
    sessions: list[dict[str, Any]] = answer["sessions"]
    return sessions


def workers(server: MailslotServer) -> list[int]:
    assert server.process is not None
    return dropped.children(server.process.pid)


class Source127(poplib.POP3_SSL):
    """POP3S from a chosen loopback source address (127.0.0.0/8 is all loopback on Linux)."""

    source = "127.0.0.1"

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, (self.source, 0))
        return self.context.wrap_socket(sock, server_hostname=self.host)


def login(server: MailslotServer, user: str, source: str = "127.0.0.1") -> poplib.POP3_SSL:
    host, port = server.implicit
    cls = type("Client", (Source127,), {"source": source})
    client = cls(host, port, context=server.tls_files.client_context(), timeout=30)
    client.user(user)
    client.pass_(server.password(user))
    return client


def stls_login(server: MailslotServer, user: str) -> poplib.POP3:
    host, port = server.starttls
    client = poplib.POP3(host, port, timeout=30)
    client.stls(server.tls_files.client_context())
    client.user(user)
    client.pass_(server.password(user))
    return client


@pytest.fixture
def server(mailslot_factory: ServerFactory) -> MailslotServer:
    server = mailslot_factory(
        extra_users=USERS, extra_sections={"server": {"workers": 2}}, start=False
    )
    for user in ("alice", *(u.name for u in USERS)):
        server.builder(user).add(MESSAGE)
    return server.start()


def sessions_on_both_workers(
    server: MailslotServer, clients: list[poplib.POP3]
) -> list[dict[str, Any]]:
    """Log in users one by one until ``who`` shows sessions on both workers.

    First both workers must serve (each has put its socket in the peers' directory): a
    worker still starting (it measures the password schemes' costs) leaves every connection
    to the other."""
    peers = server.admin_socket.with_name("admin.sock.workers")
    deadline = time.monotonic() + 30
    while not (peers.is_dir() and len([n for n in os.listdir(peers) if n.isdigit()]) >= 2):
        assert time.monotonic() < deadline, "the two workers' admin sockets"
        time.sleep(0.05)
    # In batches of four at once: while one worker is busy with a handshake the kernel wakes
    # the other, where logins one after another may all go to whichever worker waits.
    sessions: list[dict[str, Any]] = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for start in range(0, len(USERS), 4):
            batch = [user.name for user in USERS[start : start + 4]]
            clients.extend(pool.map(lambda name: login(server, name), batch))
            response = call(server.admin_socket, Request("who"))
            sessions = response.result["sessions"]
            if len({s["worker"]["pid"] for s in sessions}) == 2:
                return sessions
    pytest.fail(f"{len(USERS)} sessions all landed on one worker: {sessions}")


def test_who_lists_every_session_of_both_workers(server: MailslotServer) -> None:
    clients: list[poplib.POP3] = []
    try:
        sessions_on_both_workers(server, clients)
        clients[0].retr(1)
        clients[1].dele(1)
        stls = stls_login(server, "alice")
        clients.append(stls)
        listed = {s["user"]: s for s in who(server)}
        assert set(listed) == {u.name for u in USERS[: len(clients) - 1]} | {"alice"}
        pids = set(workers(server))
        assert {s["worker"]["pid"] for s in listed.values()} == pids
        assert {s["worker"]["index"] for s in listed.values()} == {0, 1}
        for client, name in zip(clients[:-1], (u.name for u in USERS), strict=False):
            entry = listed[name]
            local = client.sock.getsockname()
            assert entry["client"] == f"{local[0]}:{local[1]}"
            assert entry["address"] == "127.0.0.1"
            assert entry["listener"] == "{}:{}".format(*server.implicit)
            assert entry["tls"] == client.sock.version()
            assert entry["since"].endswith("Z")
        assert listed[USERS[0].name]["retrieved"] == 1
        assert listed[USERS[0].name]["deleted"] == 0
        assert listed[USERS[1].name]["deleted"] == 1
        assert listed[USERS[1].name]["retrieved"] == 0
        assert listed["alice"]["listener"] == "{}:{}".format(*server.starttls)
        assert listed["alice"]["tls"] == "TLSv1.3"
        # The session id is the one its log lines carry.
        assert f"session={listed['alice']['session']} peer=" in server.log()
        text = cli("who", "--config", str(server.config_path))
        assert text.returncode == 0
        lines = text.stdout.splitlines()
        assert lines[0].split() == [
            "USER",
            "CLIENT",
            "LISTENER",
            "TLS",
            "SINCE",
            "RETR",
            "DELE",
            "WORKER",
        ]
        assert len(lines) == 1 + len(clients)
    finally:
        for client in clients:
            client.close()


def test_kick_user_ends_the_session_and_commits_nothing(server: MailslotServer) -> None:
    clients: list[poplib.POP3] = []
    try:
        sessions = sessions_on_both_workers(server, clients)
        # The last session is on whichever worker; kick it whoever takes the request.
        victim = clients[-1]
        name = USERS[len(clients) - 1].name
        assert victim.dele(1).startswith(b"+OK")
        before = message_files(server.maildir(name))
        result = cli("kick", "--config", str(server.config_path), name)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "kicked 1 session"
        with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
            victim.stat()
        assert message_files(server.maildir(name)) == before  # the DELE was not committed
        assert len(before) == 1
        remaining = {s["user"] for s in who(server)}
        assert name not in remaining
        assert remaining == {s["user"] for s in sessions} - {name}
        again = login(server, name)  # the maildrop was released
        clients.append(again)
        assert again.stat()[0] == 1
        assert "kicked by the administrator" in server.log()
        nobody = cli("kick", "--config", str(server.config_path), "nosuchuser")
        assert nobody.returncode == 1
        assert nobody.stdout.strip() == "kicked 0 sessions"
    finally:
        for client in clients:
            client.close()


def test_kick_address_ends_only_that_clients_sessions(server: MailslotServer) -> None:
    here = login(server, "user0", "127.0.0.1")
    there = [login(server, name, "127.0.0.2") for name in ("user1", "user2", "user3")]
    try:
        result = cli(
            "kick", "--config", str(server.config_path), "--address", "127.0.0.2", "--json"
        )
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["kicked"] == 3
        assert {s["user"] for s in answer["sessions"]} == {"user1", "user2", "user3"}
        for client in there:
            with pytest.raises(poplib.error_proto):
                client.noop()
        assert here.noop().startswith(b"+OK")
        assert [s["user"] for s in who(server)] == ["user0"]
    finally:
        for client in (here, *there):
            client.close()


def test_mailbox_status_shows_the_lock_holder(server: MailslotServer) -> None:
    maildir = server.maildir("alice")
    server.builder("alice").add(MESSAGE + b"more\n", folder="cur", flags="S")
    files = [p for sub in ("new", "cur") for p in (maildir / sub).iterdir()]
    config = str(server.config_path)
    free = cli("mailbox", "status", "--config", config, "alice", "--json")
    assert free.returncode == 0, free.stderr
    status = json.loads(free.stdout)
    assert status["messages"] == 2
    assert status["octets"] == sum(p.stat().st_size for p in files)
    oldest = min(p.stat().st_mtime for p in files)
    assert status["oldest"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest))
    assert status["locked"] is False and status["locked_by"] == []
    client = login(server, "alice")
    try:
        held = json.loads(cli("mailbox", "status", "--config", config, "alice", "--json").stdout)
        assert held["locked"] is True
        [holder] = held["locked_by"]
        assert holder["worker"]["pid"] in workers(server)
        assert held["lock_pids"] == [holder["worker"]["pid"]]
        local = client.sock.getsockname()
        assert holder["client"] == f"{local[0]}:{local[1]}"
        text = cli("mailbox", "status", "--config", config, "alice")
        assert f"worker {holder['worker']['index']} (pid {holder['worker']['pid']})" in text.stdout
    finally:
        client.quit()
    unknown = cli("mailbox", "status", "--config", config, "nosuchuser")
    assert unknown.returncode == 67
    assert "no user" in unknown.stderr


def test_reload_starts_new_workers_and_stop_stops(server: MailslotServer) -> None:
    config = str(server.config_path)
    old = set(workers(server))
    assert len(old) == 2
    held = login(server, "user0")  # kept across the reload: its worker retires, serving it
    [before] = who(server)
    retiring = before["worker"]["pid"]
    result = cli("reload", "--config", config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reloading"
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and len(set(workers(server)) - old) != 2:
        time.sleep(0.05)  # polling for the new generation
    new = set(workers(server)) - old
    assert len(new) == 2, server.log()
    assert "reload asked on the admin socket" in server.log()
    server.wait_for_log("TLS certificate reloaded")  # said once the new workers are forked
    client = login(server, "alice")  # on the new generation
    try:
        listed = {s["user"]: s["worker"]["pid"] for s in who(server)}
        # The retiring worker no longer takes admin requests, but is asked by the new ones.
        assert listed["user0"] == retiring
        assert listed["alice"] in new
        assert cli("kick", "--config", config, "user0").returncode == 0
        with pytest.raises(poplib.error_proto, match="SYS/TEMP"):
            held.noop()
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and retiring in workers(server):
            time.sleep(0.05)  # polling for the retired worker to exit, its last session gone
        assert set(workers(server)) == new
    finally:
        client.quit()
        held.close()
    stopped = cli("stop", "--config", config)
    assert stopped.returncode == 0, stopped.stderr
    assert server.process is not None
    assert server.process.wait(timeout=STOP_DEADLINE) == 0
    assert not server.admin_socket.exists()
    assert not server.admin_socket.with_name("admin.sock.workers").exists()
    gone = cli("who", "--config", config)
    assert gone.returncode == 69
    assert "is mailslot running?" in gone.stderr


def test_one_worker_answers_too(mailslot_factory: ServerFactory) -> None:
    server = mailslot_factory(start=False)
    server.builder("alice").add(MESSAGE)
    server.start()
    client = login(server, "alice")
    try:
        [entry] = who(server)
        assert server.process is not None
        assert entry["user"] == "alice" and entry["worker"]["pid"] == server.process.pid
        client.dele(1)
        assert cli("kick", "--config", str(server.config_path), "alice").returncode == 0
        with pytest.raises(poplib.error_proto, match="SYS/TEMP"):
            client.noop()
        assert len(message_files(server.maildir("alice"))) == 1
    finally:
        client.close()
    assert cli("stop", "--config", str(server.config_path)).returncode == 0
    assert server.process.wait(timeout=STOP_DEADLINE) == 0


def test_the_socket_is_the_owners_alone(mailslot_factory: ServerFactory) -> None:
    dropped.require_importable_as()
    with dropped.shared_directory() as shared:
        path = shared / "admin.sock"
        server = mailslot_factory(extra_sections={"admin": {"socket": str(path)}})
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
        refused = cli("who", "--socket", str(path), user=dropped.USER)
        assert refused.returncode == 77, refused.stderr
        assert "permission denied" in refused.stderr
        # Past the file's mode, the server's own check of the peer's uid refuses as well.
        path.chmod(0o666)
        refused = cli("who", "--socket", str(path), user=dropped.USER)
        assert refused.returncode == 77, refused.stderr
        assert "permission denied" in refused.stderr
        assert "refused a connection from uid" in server.log()
        path.chmod(0o600)
        assert cli("who", "--config", str(server.config_path)).returncode == 0
        server.stop()


def test_a_symlink_at_the_socket_path_is_never_followed(
    mailslot_factory: ServerFactory, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.write_text("keep me\n")
    link = tmp_path / "admin.sock"
    link.symlink_to(target)
    server = mailslot_factory(extra_sections={"admin": {"socket": str(link)}}, start=False)
    with pytest.raises(RuntimeError, match="did not come up"):
        server.start()
    assert "exists and is not a socket" in server.log()
    assert link.is_symlink() and target.read_text() == "keep me\n"


def test_the_quick_start_has_a_working_admin_socket(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailslot", "serve", "--data-dir", str(data)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        config = str(data / "mailslot.toml")
        deadline = time.monotonic() + DEADLINE
        result = None
        while time.monotonic() < deadline and process.poll() is None:
            result = cli("who", "--config", config, "--json")
            if result.returncode == 0:
                break
            time.sleep(0.1)  # polling for the server to come up
        assert result is not None and result.returncode == 0, (tmp_path / "serve.log").read_text()
        assert json.loads(result.stdout) == {"sessions": [], "unreachable": []}
        assert (data / "admin.sock").is_socket()
        assert cli("stop", "--config", config).returncode == 0
        assert process.wait(timeout=STOP_DEADLINE) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_mailbox_status_of_the_postgresql_store_names_the_lease_holder(
    mailslot_factory: ServerFactory, postgres: PostgresServer
) -> None:
    dsn = upgraded(postgres)
    server = node(mailslot_factory, dsn, "node-a", server={"workers": 2})
    lmtp_deliver(server, "alice", MESSAGE)
    first = login(server, "alice")
    stat_reply = first.stat()
    first.quit()
    config = str(server.config_path)
    free = json.loads(cli("mailbox", "status", "--config", config, "alice", "--json").stdout)
    assert free["store"] == "postgresql"
    assert stat_reply[0] == 1
    assert (free["messages"], free["octets"]) == stat_reply  # STAT's count and octets
    assert free["oldest"].endswith("Z")
    assert free["locked"] is False and free["lease"] is None
    client = login(server, "alice")
    try:
        held = json.loads(cli("mailbox", "status", "--config", config, "alice", "--json").stdout)
        assert held["locked"] is True
        assert held["lease"]["node"] == "node-a" and held["lease"]["live"] is True
        [holder] = held["locked_by"]
        assert holder["worker"]["node"] == "node-a"
        assert holder["worker"]["pid"] in workers(server)
    finally:
        client.quit()


def test_admin_group_lets_its_members_in(mailslot_factory: ServerFactory) -> None:
    dropped.require_importable_as()
    gid = pwd.getpwnam(dropped.USER).pw_gid
    group = grp.getgrgid(gid).gr_name
    with dropped.shared_directory() as shared:
        path = shared / "admin.sock"
        server = mailslot_factory(extra_sections={"admin": {"socket": str(path), "group": group}})
        info = path.lstat()
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert (info.st_uid, info.st_gid) == (os.geteuid(), gid)
        member = cli("who", "--socket", str(path), "--json", user=dropped.USER)
        assert member.returncode == 0, member.stderr + server.log()
        assert json.loads(member.stdout)["sessions"] == []
        server.stop()


def test_workers_that_dropped_root_answer_for_each_other(tls_files: TlsFiles) -> None:
    """Started as root with [server] user: the workers, as that user, still find and ask
    each other, and reload and stop reach the root parent (the control pipe and SIGCONT)."""
    dropped.require_importable_as()
    entry = pwd.getpwnam(dropped.USER)
    with dropped.shared_directory() as shared:
        server = MailslotServer(
            shared / "server",
            tls_files,
            listeners=(Listener("implicit"),),
            extra_users=USERS,
            extra_sections={
                "server": {
                    "workers": 2,
                    "user": dropped.USER,
                    "group": grp.getgrgid(entry.pw_gid).gr_name,
                }
            },
        )
        os.chown(server.mail_root, entry.pw_uid, entry.pw_gid)
        os.chown(server.passwd_path, 0, entry.pw_gid)
        server.passwd_path.chmod(0o640)
        clients: list[poplib.POP3] = []
        try:
            server.start()
            peers = server.admin_socket.with_name("admin.sock.workers")
            assert peers.stat().st_uid == entry.pw_uid
            sessions_on_both_workers(server, clients)
            assert len(who(server)) == len(clients), server.log()
            name = USERS[len(clients) - 1].name
            kicked = cli("kick", "--config", str(server.config_path), name)
            assert kicked.returncode == 0, kicked.stderr
            assert cli("reload", "--config", str(server.config_path)).returncode == 0
            server.wait_for_log("TLS certificate reloaded")
            for client in clients:
                client.close()
            assert cli("stop", "--config", str(server.config_path)).returncode == 0
            assert server.process is not None
            assert server.process.wait(timeout=STOP_DEADLINE) == 0
        finally:
            for client in clients:
                client.close()
            server.stop()


def test_a_worker_killed_with_sigkill_is_forgotten(
    mailslot_factory: ServerFactory, tmp_path: Path
) -> None:
    # A worker killed before it serves would stop the server (supervisor): wait for systemd's
    # READY=1, sent once both serve.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(DEADLINE)
        server = mailslot_factory(
            extra_users=USERS,
            extra_sections={"server": {"workers": 2}},
            env={"NOTIFY_SOCKET": str(tmp_path / "notify")},
        )
        while b"READY=1" not in notify.recv(4096):
            pass
    first, second = workers(server)
    os.kill(second, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and len(set(workers(server)) - {first, second}) != 1:
        time.sleep(0.05)  # polling for the replacement
    [replacement] = set(workers(server)) - {first, second}
    peers = server.admin_socket.with_name("admin.sock.workers")
    assert str(second) in os.listdir(peers)  # what it could not remove itself
    for _ in range(4):  # whichever worker takes it, the dead one is not "unreachable"
        assert call(server.admin_socket, Request("who")).result["unreachable"] == []
    clients: list[poplib.POP3] = []
    try:
        # Asked until a request lands on each live worker: the killed one's socket, which no
        # process answers any more, is not reported and is removed.
        sessions = sessions_on_both_workers(server, clients)
        assert {s["worker"]["pid"] for s in sessions} == {first, replacement}
        assert who(server)
        assert str(second) not in os.listdir(peers)
    finally:
        for client in clients:
            client.close()
