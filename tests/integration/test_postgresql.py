"""Many machines, one mail store: two ``mailslot serve`` processes on one PostgreSQL.

Real processes, real sockets, real TLS and a real PostgreSQL (tests/support/postgres.py):
delivery over LMTP on one node and retrieval on the other, the maildrop lease across nodes
(RFC 1939 section 8's exclusive lock, ``[IN-USE]`` of RFC 2449), a holder killed or frozen,
the fenced QUIT, and a database that goes away.
"""

from __future__ import annotations

import asyncio
import os
import poplib
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tests.support.popclient import pop3_connect
from tests.support.postgres import PostgresServer
from tests.support.server import Listener, MailslotServer, ServerFactory

from mailslot.store.postgresql import schema

LATEST = schema.latest()
LISTENERS = (Listener("implicit"), Listener("none", protocol="lmtp"))
TAKEOVER_DEADLINE = 30.0  # polling for a lease to expire; not a threshold


def upgraded(postgres: PostgresServer) -> str:
    return postgres.upgraded("node")


def node(
    factory: ServerFactory,
    dsn: str,
    name: str,
    *,
    lease: float = 30.0,
    server: dict[str, Any] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
    **options: Any,
) -> MailslotServer:
    """A server of the shared store named ``name`` ([server] node_id)."""
    return factory(
        listeners=LISTENERS,
        store={"backend": "postgresql", "dsn": dsn, "lease_seconds": lease, "pool_size": 4},
        extra_sections={"server": {"node_id": name, **(server or {})}, **(sections or {})},
        **options,
    )


def lmtp_deliver(server: MailslotServer, user: str, message: bytes) -> None:
    with smtplib.LMTP(*server.listener("none", protocol="lmtp"), timeout=30) as lmtp:
        lmtp.sendmail("sender@example.org", [f"{user}@localhost"], message)


def login(server: MailslotServer, user: str = "alice") -> poplib.POP3:
    client = pop3_connect(server, "implicit")
    client.user(user)
    client.pass_(server.password(user))
    return client


def try_login(server: MailslotServer, user: str = "alice") -> tuple[bytes, poplib.POP3 | None]:
    client = pop3_connect(server, "implicit")
    client.user(user)
    try:
        return client.pass_(server.password(user)), client
    except poplib.error_proto as exc:
        client.close()
        return exc.args[0], None


def login_when_free(server: MailslotServer, user: str = "alice") -> tuple[poplib.POP3, float]:
    """Log in, retrying while the maildrop is ``[IN-USE]``; return the client and how long
    it took (polling for a lease to expire)."""
    start = time.monotonic()
    while True:
        reply, client = try_login(server, user)
        if client is not None:
            return client, time.monotonic() - start
        assert b"[IN-USE]" in reply, reply
        assert time.monotonic() - start < TAKEOVER_DEADLINE, "the lease never expired"
        time.sleep(0.2)


def messages_in(dsn: str) -> int:
    async def count() -> int:
        connection = await asyncpg.connect(dsn)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM mailslot_messages"))
        finally:
            await connection.close()

    return asyncio.run(count())


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    return upgraded(postgres)


def test_delivered_on_one_node_is_fetched_on_the_other_byte_for_byte(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    first = node(mailslot_factory, dsn, "node-a")
    second = node(mailslot_factory, dsn, "node-b")
    body = b"Subject: across nodes\r\n\r\n" + b"".join(b"line %d\r\n" % n for n in range(5000))
    lmtp_deliver(first, "alice", body)

    client = login(second)
    (_, listing, _) = client.list()
    assert len(listing) == 1
    (_, lines, _) = client.retr(1)
    uidl_b = client.uidl(1)
    client.quit()
    client = login(first)
    uidl_a = client.uidl(1)
    client.quit()
    fetched = b"\r\n".join(lines) + b"\r\n"
    # What LMTP stored after its own trace headers is exactly what was sent.
    assert fetched.endswith(body)
    assert fetched.startswith(b"Delivered-To: ") or fetched.startswith(b"Return-Path: ")
    assert uidl_a == uidl_b


def test_pipelined_retrs_each_get_their_own_message(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    """RETRs sent in one write (RFC 2449 section 6.6): the small messages after the first come
    along in its query; the large one streams by itself; every reply is its own message."""
    server = node(mailslot_factory, dsn, "node-a")
    bodies = [
        b"Subject: small %d\r\n\r\n" % n + b"".join(b"line %d\r\n" % k for k in range(800 + n))
        for n in range(3)
    ]
    bodies.insert(2, b"Subject: large\r\n\r\n" + b"".join(b"row %d\r\n" % k for k in range(40_000)))
    for body in bodies:
        lmtp_deliver(server, "alice", body)
    client = login(server)
    commands = b"".join(b"RETR %d\r\n" % n for n in range(1, len(bodies) + 1))
    client.sock.sendall(commands + commands)  # each twice: read ahead, then dropped or not
    for _ in range(2):
        for body in bodies:
            status, lines, _ = client._getlongresp()  # type: ignore[attr-defined]
            assert status.startswith(b"+OK")
            assert (b"\r\n".join(lines) + b"\r\n").endswith(body)
    client.quit()


def test_two_logins_for_one_user_on_two_nodes_race_with_exactly_one_winner(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    servers = [node(mailslot_factory, dsn, "node-a"), node(mailslot_factory, dsn, "node-b")]
    for round_ in range(20):
        outcomes = _race(servers)
        replies = sorted(reply[:3] for reply, _ in outcomes)
        assert replies == [b"+OK", b"-ER"], (round_, outcomes)
        loser = next(reply for reply, client in outcomes if client is None)
        assert b"[IN-USE]" in loser
        for _, client in outcomes:
            if client is not None:
                client.quit()


def _race(servers: list[MailslotServer]) -> list[tuple[bytes, poplib.POP3 | None]]:
    """Both servers get alice's USER, then PASS at the same moment."""
    barrier = threading.Barrier(len(servers))
    outcomes: list[tuple[bytes, poplib.POP3 | None]] = [(b"", None)] * len(servers)

    def race(index: int) -> None:
        server = servers[index]
        client = pop3_connect(server, "implicit")
        client.user("alice")
        barrier.wait()
        try:
            outcomes[index] = (client.pass_(server.password("alice")), client)
        except poplib.error_proto as exc:
            client.close()
            outcomes[index] = (exc.args[0], None)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(servers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_a_killed_holder_deletes_nothing_and_frees_the_user_within_the_lease(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    lease = 3.0
    first = node(mailslot_factory, dsn, "node-a", lease=lease)
    second = node(mailslot_factory, dsn, "node-b", lease=lease)
    lmtp_deliver(first, "alice", b"Subject: keep me\r\n\r\nbody\r\n")
    client = login(first)
    client.dele(1)
    reply, _ = try_login(second)
    assert b"[IN-USE]" in reply
    first.kill()  # SIGKILL between DELE and QUIT
    client.sock.close()
    taken, waited = login_when_free(second)
    assert taken.stat()[0] == 1  # nothing deleted
    taken.quit()
    # Within the lease's lifetime; the slack is for the polling and a loaded machine, the
    # hard bound being TAKEOVER_DEADLINE.
    assert waited < lease + 10
    assert messages_in(dsn) == 1


def test_a_frozen_holder_is_fenced_at_quit_and_deletes_nothing(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    lease = 3.0
    first = node(mailslot_factory, dsn, "node-a", lease=lease)
    second = node(mailslot_factory, dsn, "node-b", lease=lease)
    lmtp_deliver(first, "alice", b"Subject: fenced\r\n\r\nbody\r\n")
    client = login(first)
    client.dele(1)
    assert first.process is not None
    os.kill(first.process.pid, signal.SIGSTOP)
    try:
        taken, _ = login_when_free(second)
    finally:
        os.kill(first.process.pid, signal.SIGCONT)
    with pytest.raises(poplib.error_proto) as refused:
        client.quit()
    assert b"[SYS/TEMP]" in refused.value.args[0]
    assert taken.stat()[0] == 1
    taken.quit()
    assert messages_in(dsn) == 1
    assert "lease was lost" in first.log()


def test_a_live_session_keeps_its_lease_past_its_lifetime(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    lease = 3.0
    first = node(mailslot_factory, dsn, "node-a", lease=lease)
    second = node(mailslot_factory, dsn, "node-b", lease=lease)
    lmtp_deliver(first, "alice", b"Subject: renewed\r\n\r\nbody\r\n")
    client = login(first)
    client.dele(1)
    deadline = time.monotonic() + 2 * lease
    while time.monotonic() < deadline:  # polling across several renewals
        reply, _ = try_login(second)
        assert b"[IN-USE]" in reply
        time.sleep(0.3)
    client.quit()
    assert messages_in(dsn) == 0


def test_a_restarted_node_clears_its_own_leases_at_once(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    first = node(mailslot_factory, dsn, "node-a", lease=600.0)
    client = login(first)
    first.kill()
    client.sock.close()
    first.start()
    reply, again = try_login(first)
    assert reply.startswith(b"+OK"), reply
    assert again is not None
    again.quit()


def test_the_database_stopping_mid_session_is_a_temporary_failure(
    mailslot_factory: ServerFactory, postgres: PostgresServer, dsn: str
) -> None:
    server = node(mailslot_factory, dsn, "node-a")
    lmtp_deliver(server, "alice", b"Subject: db\r\n\r\nbody\r\n")
    client = login(server)
    postgres.stop()
    try:
        with pytest.raises(poplib.error_proto) as failed:
            client.retr(1)
        assert b"[SYS/TEMP]" in failed.value.args[0]
        reply, _ = try_login(server, "bob")
        assert b"[SYS/TEMP]" in reply
    finally:
        postgres.start()
    client.close()
    bob = login(server, "bob")
    bob.quit()
    log = server.log()
    assert "Traceback" not in log


@pytest.mark.parametrize("dsn", ["postgresql://a@[::1/x", "mysql://db/mail"])
def test_a_malformed_dsn_stops_the_start_with_one_line(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    server = node(mailslot_factory, dsn, "node-a", start=False)
    result = subprocess.run(
        [sys.executable, "-m", "mailslot", "serve", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78
    assert "cannot start: [store] dsn: " in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("problem", ["wrong-dsn", "database-down", "schema-too-old"])
def test_a_database_problem_at_start_is_one_clear_line(
    mailslot_factory: ServerFactory, postgres: PostgresServer, problem: str
) -> None:
    if problem == "wrong-dsn":
        dsn = postgres.dsn("no_such_database")
    elif problem == "database-down":
        dsn = f"postgresql://postgres@127.0.0.1:{_closed_port()}/x"
    else:
        dsn = postgres.database("old")  # no schema at all
    server = node(mailslot_factory, dsn, "node-a", start=False)
    if problem == "schema-too-old":
        result = subprocess.run(
            [sys.executable, "-m", "mailslot", "serve", "--config", str(server.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 78
        assert "mailslot db upgrade --config" in result.stderr
        assert "Traceback" not in result.stderr
        return
    server.start()  # it serves: logins answer [SYS/TEMP]
    reply, _ = try_login(server)
    assert b"[SYS/TEMP]" in reply
    log = server.log()
    assert "database unavailable at start" in log
    assert "Traceback" not in log


def _closed_port() -> int:
    from tests.support.server import free_port

    return free_port()


def test_db_upgrade_creates_then_is_harmless(postgres: PostgresServer, tmp_path: Path) -> None:
    dsn = postgres.database("upgrade")
    config = tmp_path / "mailslot.toml"
    config.write_text(
        '[[listener]]\naddress = "127.0.0.1"\nport = 1110\ntls = "none"\n'
        '[auth]\npasswd_file = "users"\nallow_plaintext_without_tls = true\n'
        '[store]\nbackend = "postgresql"\n'
    )
    env = {**os.environ, "MAILSLOT_DSN": dsn}

    def db(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailslot", "db", action, "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    text = config.read_text()
    config.write_text(text.replace('backend = "postgresql"', 'backend = "maildir"'))
    refused = db("upgrade")
    assert refused.returncode == 78
    assert "there is no database" in refused.stderr
    # Users alone in PostgreSQL need the schema too.
    config.write_text(
        text.replace('backend = "postgresql"', 'backend = "maildir"').replace(
            "[auth]\n", '[auth]\nbackend = "postgresql"\n'
        )
    )
    status = db("status")
    assert (status.returncode, status.stdout.strip()) == (
        75,
        f"schema version 0, this mailslot needs {LATEST}",
    )
    first = db("upgrade")
    assert first.returncode == 0
    assert first.stdout.strip() == f"schema upgraded from version 0 to {LATEST}"
    second = db("upgrade")
    assert (second.returncode, second.stdout.strip()) == (
        0,
        f"schema is at version {LATEST}: nothing to do",
    )
    assert db("status").returncode == 0


def test_mailslot_deliver_writes_into_the_database_with_the_dsn_from_the_environment(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    server = node(mailslot_factory, dsn, "node-a")
    # The DSN only in the environment of `mailslot deliver`, as an MTA's pipe would pass it.
    config = server.config_path.read_text().replace(f'dsn = "{dsn}"\n', "")
    assert dsn not in config
    piped = server.directory / "deliver.toml"
    piped.write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "mailslot", "deliver", "--config", str(piped), "--user", "alice"],
        input=b"Subject: piped\n\nhello\n",
        capture_output=True,
        env={**os.environ, "MAILSLOT_DSN": dsn},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    client = login(server)
    (_, lines, _) = client.retr(1)
    client.quit()
    assert lines[-1] == b"hello"
    assert b"Subject: piped" in lines


def test_workers_of_one_node_share_the_lease_and_each_connects_after_its_fork(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    server = node(
        mailslot_factory,
        dsn,
        "node-a",
        server={"workers": 2},
    )
    holder = login(server)
    # Several attempts, so that both workers (which one accepts is the kernel's choice)
    # meet the lease.
    for _ in range(6):
        reply, _ = try_login(server)
        assert b"[IN-USE]" in reply
    holder.quit()
    client = login(server)
    client.quit()
    assert "Traceback" not in server.log()


def test_lmtp_quota_counts_what_the_database_holds(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    server = node(
        mailslot_factory,
        dsn,
        "node-a",
        sections={"delivery": {"quota_messages": 1}},
    )
    lmtp_deliver(server, "alice", b"Subject: one\r\n\r\nfirst\r\n")
    with pytest.raises(smtplib.SMTPException):
        lmtp_deliver(server, "alice", b"Subject: two\r\n\r\nsecond\r\n")
    assert messages_in(dsn) == 1


def test_users_in_postgresql_added_with_mailslot_user_log_in_on_every_node(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    servers = [
        node(mailslot_factory, dsn, name, auth={"backend": "postgresql"})
        for name in ("node-a", "node-b")
    ]
    config = servers[0].config_path

    def user(*args: str, password: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailslot", "user", *args, "--config", str(config)],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    added = user("add", "dave", password="dave's first pw")
    assert added.returncode == 0, added.stderr
    assert "the PostgreSQL user table" in added.stderr
    assert user("add", "dave", password="again").returncode == 1
    assert user("list").stdout.split() == ["dave"]
    lmtp_deliver(servers[0], "dave", b"Subject: for dave\r\n\r\nhi\r\n")
    for server in servers:
        client = pop3_connect(server, "implicit")
        client.user("dave")
        client.pass_("dave's first pw")
        assert client.stat()[0] == 1
        client.quit()
    # alice is only in the passwd-file, which this backend does not read.
    reply, _ = try_login(servers[1], "alice")
    assert b"-ERR [AUTH]" in reply
    assert user("passwd", "dave", password="second pw").returncode == 0
    client = pop3_connect(servers[1], "implicit")
    client.user("dave")
    with pytest.raises(poplib.error_proto):
        client.pass_("dave's first pw")
    client.close()
    assert user("delete", "dave").returncode == 0
    assert user("delete", "dave").returncode == 67


def test_a_node_stopped_with_sigterm_gives_its_leases_back(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    first = node(mailslot_factory, dsn, "node-a", lease=600.0, server={"shutdown_timeout": 1})
    second = node(mailslot_factory, dsn, "node-b", lease=600.0)
    client = login(first)
    assert first.stop() == 0
    client.sock.close()
    reply, taken = try_login(second)  # at once: no lease of node-a is left to expire
    assert reply.startswith(b"+OK"), reply
    assert taken is not None
    taken.quit()
    assert "Traceback" not in first.log()
