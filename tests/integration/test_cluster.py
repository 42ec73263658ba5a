"""Three ``mailslot serve`` nodes behind a real HAProxy on one PostgreSQL (issue 18).

Real processes throughout: Debian's ``haproxy`` (tests/support/haproxy.py) in TCP mode with
``send-proxy-v2`` and TLS health checks that send a PROXY v2 ``LOCAL`` header, three nodes
with their own ``node_id`` on one database holding the mail and the users, and real clients
(poplib, curl, fetchmail) through HAProxy.  Each node has a PROXY listener (implicit TLS,
trusting 127.0.0.1 only) and an LMTP listener.  Besides the POP3S frontend HAProxy has one
frontend pinned to each node, so a test can say which node a session lands on.

What is shown: a message delivered on node 1 fetched byte for byte with one UIDL by every
client; RFC 1939 section 8's exclusive lock across nodes (one ``+OK`` and one ``[IN-USE]``,
RFC 2449); a killed or frozen holder, the fenced QUIT; a node killed inside QUIT's transaction
(the ``MAILSLOT_TEST_FAULT`` hook); deliveries while nodes die and come back; PostgreSQL
restarted under a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import poplib
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tests.support.external import describe, run
from tests.support.haproxy import HAProxy, Node, check_config, render_config
from tests.support.postgres import PostgresServer
from tests.support.programs import require_program
from tests.support.server import Listener, MailslotServer
from tests.support.tls import TlsFiles

LEASE = 2.0  # seconds: short, so that takeovers are quick
TAKEOVER_DEADLINE = 30.0  # polling for a lease to expire; not a threshold
LISTENERS = (
    Listener("implicit", proxy_protocol=True, proxy_trusted_networks=("127.0.0.1",)),
    Listener("none", protocol="lmtp"),
)
NAMES = ("node1", "node2", "node3")


class Cluster:
    """The nodes, HAProxy and the database's DSN; POP3 clients through HAProxy."""

    def __init__(self, nodes: list[MailslotServer], haproxy: HAProxy, dsn: str) -> None:
        self.nodes = nodes
        self.haproxy = haproxy
        self.dsn = dsn
        self.context = nodes[0].tls_files.client_context()

    def password(self, user: str) -> str:
        return self.nodes[0].password(user)

    def connect(self, pinned: int | None = None) -> poplib.POP3_SSL:
        """A POP3S client through HAProxy: its balanced frontend, or the one pinned to a node."""
        host, port = self.haproxy.address if pinned is None else self.haproxy.pinned[pinned]
        return poplib.POP3_SSL(host, port, context=self.context, timeout=30)

    def try_login(
        self, user: str = "alice", pinned: int | None = None
    ) -> tuple[bytes, poplib.POP3_SSL | None]:
        client = self.connect(pinned)
        client.user(user)
        try:
            return client.pass_(self.password(user)), client
        except poplib.error_proto as exc:
            client.close()
            return exc.args[0], None

    def login(self, user: str = "alice", pinned: int | None = None) -> poplib.POP3_SSL:
        reply, client = self.try_login(user, pinned)
        assert client is not None, reply
        return client

    def login_when_free(
        self, user: str = "alice", pinned: int | None = None
    ) -> tuple[poplib.POP3_SSL, float]:
        """Log in, retrying while the maildrop is ``[IN-USE]``; the client and the wait."""
        start = time.monotonic()
        while True:
            reply, client = self.try_login(user, pinned)
            if client is not None:
                return client, time.monotonic() - start
            assert b"[IN-USE]" in reply, reply
            assert time.monotonic() - start < TAKEOVER_DEADLINE, "the lease never expired"
            time.sleep(0.1)  # polling for the lease to expire

    def lmtp(self, index: int) -> smtplib.LMTP:
        return smtplib.LMTP(*self.nodes[index].listener("none", protocol="lmtp"), timeout=30)

    def deliver(self, index: int, message: bytes, user: str = "alice") -> None:
        with self.lmtp(index) as lmtp:
            lmtp.sendmail("sender@example.org", [f"{user}@localhost"], message)

    def query(self, sql: str, *args: Any) -> list[Any]:
        async def fetch() -> list[Any]:
            connection = await asyncpg.connect(self.dsn)
            try:
                return list(await connection.fetch(sql, *args))
            finally:
                await connection.close()

        return asyncio.run(fetch())

    def bodies(self, user: str = "alice") -> list[bytes]:
        """The user's stored messages, in arrival order, as the database holds them."""
        rows = self.query(
            "SELECT b.body FROM mailslot_bodies b JOIN mailslot_accounts a USING (account_id)"
            " WHERE a.name = $1 ORDER BY b.seq",
            user,
        )
        return [bytes(row[0]) for row in rows]

    def pid(self, index: int) -> int:
        process = self.nodes[index].process
        assert process is not None
        return process.pid


def _add_users(config: Path, users: dict[str, str]) -> None:
    """``mailslot user add`` into the database, at once for every user.

    SSHA512 rather than the default argon2id (or SHA512-CRYPT, 656,000 rounds): the races log
    in a hundred times on two cores the whole suite shares, and a deliberately slow hash is
    not what these tests are about.
    """
    command = [sys.executable, "-m", "mailslot", "user", "add", "--scheme", "SSHA512"]
    processes = [
        (
            subprocess.Popen(
                [*command, user, "--config", str(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            password,
        )
        for user, password in users.items()
    ]
    for process, password in processes:
        _, errors = process.communicate(password + "\n", timeout=60)
        assert process.returncode == 0, errors


def _start_all(nodes: list[MailslotServer]) -> None:
    starting = [threading.Thread(target=server.start) for server in nodes if not server.running]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    for server in nodes:
        assert server.running, server.log()


@pytest.fixture(scope="module")
def shared_cluster(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles, postgres: PostgresServer
) -> Iterator[Cluster]:
    """One cluster for the module (starting three nodes costs seconds on a loaded machine);
    :func:`cluster` puts it back in shape for each test."""
    program = require_program("haproxy")
    dsn = postgres.upgraded("cluster")
    directory = tmp_path_factory.mktemp("cluster")
    nodes = [
        MailslotServer(
            directory / name,
            tls_files,
            listeners=LISTENERS,
            store={"backend": "postgresql", "dsn": dsn, "lease_seconds": LEASE, "pool_size": 4},
            auth={"backend": "postgresql"},
            extra_sections={"server": {"node_id": name, "shutdown_timeout": 1}},
        )
        for name in NAMES
    ]
    _add_users(nodes[0].config_path, {user: nodes[0].password(user) for user in ("alice", "bob")})
    haproxy: HAProxy | None = None
    try:
        _start_all(nodes)
        haproxy = HAProxy(
            program,
            [Node(name, *server.implicit) for name, server in zip(NAMES, nodes, strict=True)],
            str(tls_files.ca_pem),
        ).start()
        yield Cluster(nodes, haproxy, dsn)
    finally:
        for server in nodes:
            process = server.process
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)  # a SIGSTOPped node would not stop
            server.stop()
        if haproxy is not None:
            haproxy.stop()


@pytest.fixture
def cluster(shared_cluster: Cluster, request: pytest.FixtureRequest) -> Cluster:
    """The module's cluster with every node running (without the fault hook), an empty
    mail store (the users stay) and HAProxy seeing every node UP."""
    nodes = shared_cluster.nodes
    request.node.mailslot_servers = nodes  # their logs go into a failing test's report
    for server in nodes:
        process = server.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
        if server.env.pop("MAILSLOT_TEST_FAULT", None) is not None:
            server.stop()
    _start_all(nodes)
    shared_cluster.query(
        "TRUNCATE mailslot_accounts, mailslot_messages, mailslot_bodies, mailslot_leases"
    )
    shared_cluster.haproxy.wait_for(dict.fromkeys(NAMES, "UP"))
    return shared_cluster


# -- the deployment guide's configuration ---------------------------------------------------

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
GUIDE_NODES = [Node(f"pop{n}", f"10.0.0.1{n}", 995) for n in (1, 2, 3)]


def guide_block() -> str:
    blocks = re.findall(r"```haproxy\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert len(blocks) == 1, "docs/deployment.md has one haproxy block"
    return str(blocks[0])


def test_the_guides_haproxy_config_is_the_one_the_tests_run(tmp_path: Path) -> None:
    # The fixture below renders the same template for its own addresses.
    assert guide_block() == render_config(
        bind="192.0.2.10:995",
        nodes=GUIDE_NODES,
        ca_file="@system-ca",
        admin_socket="/run/haproxy/admin.sock",
        check_sni="pop.example.org",
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(guide_block())
    checked = check_config(require_program("haproxy"), path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout


# -- HAProxy's health checks -----------------------------------------------------------------


def test_haproxy_health_checks_send_local_and_cost_nothing(cluster: Cluster) -> None:
    marks = [len(server.log()) for server in cluster.nodes]
    for server, mark in zip(cluster.nodes, marks, strict=True):
        deadline = time.monotonic() + TAKEOVER_DEADLINE
        while server.log()[mark:].count("header=v2/LOCAL") < 2:  # polling for two checks
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        log = server.log()[mark:]
        checks = [line for line in log.splitlines() if "header=v2/LOCAL" in line]
        # PROXY v2 section 2.2: LOCAL keeps the real endpoints (HAProxy's own address),
        # and the check's QUIT ends it as any client's would.
        assert all("disconnect: reason=quit user=-" in line for line in checks), checks
        assert all("peer=127.0.0.1:" in line for line in checks), checks
        assert "PROXY header refused" not in log
        assert "TLS handshake failed" not in log
        assert " ERROR " not in log and " WARNING " not in log and "Traceback" not in log
    # A client through HAProxy is logged with its own address and the proxy's.
    client = cluster.login()
    client.quit()
    assert any(
        "header=v2/PROXY" in line and "user=alice" in line
        for server in cluster.nodes
        for line in server.log().splitlines()
    )


# -- one message, every client ---------------------------------------------------------------


def test_delivered_on_node_1_is_fetched_through_haproxy_by_every_client(
    cluster: Cluster, tmp_path: Path
) -> None:
    body = b"Subject: across the cluster\r\nMessage-ID: <one@example.org>\r\n\r\n" + b"".join(
        b"line %d of the body\r\n" % n for n in range(3000)
    )
    cluster.deliver(0, body)
    (stored,) = cluster.bodies()  # as a Maildir file would hold it: LF line ends
    wire = stored.replace(b"\n", b"\r\n")  # RFC 1939 section 3: CRLF on the wire
    assert wire.endswith(body)

    # poplib, through the balanced frontend and through each node's own frontend.
    uidls = set()
    for pinned in (None, 0, 1, 2):
        client = cluster.login(pinned=pinned)
        (_, lines, _) = client.retr(1)
        uidls.add(client.uidl(1).split()[-1])
        client.quit()
        assert b"\r\n".join(lines) + b"\r\n" == wire
    assert len(uidls) == 1
    (uidl,) = uidls

    # curl: RETR and UIDL through HAProxy.
    curl = require_program("curl")
    host, port = cluster.haproxy.address

    def fetch(path: str, *extra: str) -> bytes:
        result = run(
            [
                curl,
                "--silent",
                "--show-error",
                "--cacert",
                str(cluster.nodes[0].tls_files.ca_pem),
                "--resolve",
                f"localhost:{port}:{host}",
                "--user",
                f"alice:{cluster.password('alice')}",
                f"pop3s://localhost:{port}/{path}",
                *extra,
            ]
        )
        assert result.returncode == 0, describe(result)
        return bytes(result.stdout)

    # curl's end-of-body scanner writes out the CRLF before the terminating dot.
    assert fetch("1") == wire
    assert fetch("", "--request", "UIDL") == b"1 " + uidl + b"\r\n"

    # fetchmail (keep), through HAProxy: what it hands its MDA, after its own Received:.
    fetchmail = require_program("fetchmail")
    home = tmp_path / "fetchmail"
    home.mkdir()
    out = home / "message"
    mda = home / "mda.sh"
    mda.write_text(f'#!/bin/sh\ncat > "{out}"\n')
    mda.chmod(0o755)
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll localhost via {host} service {port} protocol pop3 timeout 30 uidl:\n"
        f'  user "alice" there with password "{cluster.password("alice")}" is "root" here\n'
        f'  ssl sslcertck sslcertfile "{cluster.nodes[0].tls_files.ca_pem}"\n'
        f'  sslcertpath "{home}" sslcommonname "localhost"\n'
        f'  keep fetchall mda "{mda}"\n'
    )
    rc.chmod(0o600)
    result = run(
        [fetchmail, "-f", str(rc), "--idfile", str(home / "ids"), "-v"],
        env={"HOME": str(home), "FETCHMAILHOME": str(home)},
    )
    assert result.returncode == 0, describe(result)
    handed = out.read_bytes()
    assert handed.startswith(b"Received: ")
    # Its Received: header and its folded continuation lines, then the message.
    received = re.match(rb"Received: [^\n]*\n(?:[ \t][^\n]*\n)*", handed)
    assert received is not None
    assert handed[received.end() :] == stored
    # fetchmail remembers the message by the same UIDL.
    assert uidl.decode() in (home / "ids").read_text()
    assert cluster.bodies() == [stored]  # kept


# -- the lease across nodes ------------------------------------------------------------------


def _race(cluster: Cluster, pair: tuple[int, int]) -> list[tuple[bytes, poplib.POP3_SSL | None]]:
    """alice's USER on the two nodes' pinned frontends, then both PASSes at one moment."""
    barrier = threading.Barrier(2)
    outcomes: list[tuple[bytes, poplib.POP3_SSL | None]] = [(b"", None)] * 2

    def race(slot: int) -> None:
        client = cluster.connect(pinned=pair[slot])
        client.user("alice")
        barrier.wait()
        try:
            outcomes[slot] = (client.pass_(cluster.password("alice")), client)
        except poplib.error_proto as exc:
            client.close()
            outcomes[slot] = (exc.args[0], None)

    threads = [threading.Thread(target=race, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_fifty_races_of_two_logins_on_two_nodes_have_one_winner_each(cluster: Cluster) -> None:
    for round_ in range(50):
        outcomes = _race(cluster, (round_ % 3, (round_ + 1) % 3))
        winners = [client for _, client in outcomes if client is not None]
        losers = [reply for reply, client in outcomes if client is None]
        assert len(winners) == 1, (round_, outcomes)
        assert len(losers) == 1 and losers[0].startswith(b"-ERR [IN-USE]"), (round_, outcomes)
        winners[0].quit()


def test_a_node_killed_after_dele_deletes_nothing_and_frees_the_user(cluster: Cluster) -> None:
    cluster.deliver(0, b"Subject: keep me\r\n\r\nbody\r\n")
    holder = cluster.login(pinned=0)
    holder.dele(1)
    reply, _ = cluster.try_login(pinned=1)
    assert reply.startswith(b"-ERR [IN-USE]")
    cluster.nodes[0].kill()  # SIGKILL between DELE and QUIT
    holder.close()
    # Through the balanced frontend: HAProxy sends the logins to the living nodes.
    taken, waited = cluster.login_when_free()
    assert taken.stat()[0] == 1  # nothing deleted
    taken.quit()
    # Within the lease's lifetime; the slack is for polling and a loaded machine.
    assert waited < LEASE + 10
    assert len(cluster.bodies()) == 1


def test_a_frozen_holder_is_fenced_at_quit_and_deletes_nothing(cluster: Cluster) -> None:
    cluster.deliver(0, b"Subject: fenced\r\n\r\nbody\r\n")
    holder = cluster.login(pinned=0)
    holder.dele(1)
    os.kill(cluster.pid(0), signal.SIGSTOP)
    try:
        taken, _ = cluster.login_when_free(pinned=1)
    finally:
        os.kill(cluster.pid(0), signal.SIGCONT)
    with pytest.raises(poplib.error_proto) as refused:
        holder.quit()
    assert refused.value.args[0].startswith(b"-ERR [SYS/TEMP]")
    assert taken.stat()[0] == 1
    taken.quit()
    assert len(cluster.bodies()) == 1
    assert "lease was lost" in cluster.nodes[0].log()


def test_a_node_killed_inside_the_quit_transaction_deletes_all_marked_or_none(
    cluster: Cluster,
) -> None:
    """QUIT's deletion is one statement (queries.QUIT_DELETE): the test holds a lock its last
    step (the generation's bump) needs, so the statement waits inside its transaction after
    its deletions; the hook kills the node there (mailslot.store.postgresql.fault.during).
    Nothing is deleted while it waits; once the lock goes, the database finishes or aborts
    the dead client's statement: every marked message is gone, or none."""
    first = cluster.nodes[0]
    first.stop()
    first.env["MAILSLOT_TEST_FAULT"] = "quit-before-commit"
    first.start()
    count = 12
    for n in range(count):
        cluster.deliver(1, b"Subject: %d\r\nMessage-ID: <%d@example.org>\r\n\r\nbody\r\n" % (n, n))
    before = cluster.bodies()
    holder = cluster.login(pinned=0)
    marked = [n for n in range(1, count + 1) if n % 3 != 1]
    for n in marked:
        holder.dele(n)
    survivors = [body for n, body in enumerate(before, 1) if n not in marked]
    with asyncio.Runner() as runner:
        lock = runner.run(asyncpg.connect(cluster.dsn))
        try:
            runner.run(lock.execute("BEGIN"))
            runner.run(
                lock.execute(
                    "SELECT 1 FROM mailslot_accounts WHERE name = 'alice' FOR NO KEY UPDATE"
                )
            )
            with pytest.raises((poplib.error_proto, OSError, EOFError)):
                holder.quit()  # the node SIGKILLs itself while the statement waits
            holder.close()
            assert first.process is not None
            assert first.process.wait(timeout=30) == -signal.SIGKILL
            waiting = cluster.query(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND position('WITH release AS' in query) > 0"
            )
            assert waiting[0][0] == 1  # killed inside the statement, so its transaction
            assert cluster.bodies() == before
        finally:
            runner.run(lock.close())  # the lock goes: the statement goes on
    for _ in range(3000):
        running = cluster.query(
            "SELECT count(*) FROM pg_stat_activity WHERE position('WITH release AS' in query) > 0"
            " AND state = 'active' AND pid <> pg_backend_pid()"
        )
        if running[0][0] == 0:
            break
        time.sleep(0.01)
    after = cluster.bodies()
    assert after in (before, survivors)
    # The maildrop is free (the statement released the lease) or once the dead node's lease
    # expires; either way another node finds all of it or all but the marked.
    taken, _ = cluster.login_when_free(pinned=1)
    assert taken.stat()[0] == len(after)
    taken.quit()
    # The node restarted without the hook clears its lease and deletes in one go.
    del first.env["MAILSLOT_TEST_FAULT"]
    first.start()
    client = cluster.login(pinned=0)
    if after == before:
        for n in marked:
            client.dele(n)
    client.quit()
    assert cluster.bodies() == survivors


# -- deliveries while nodes die --------------------------------------------------------------

DELIVERIES = 1000
KILL_AT = (100, 250, 400, 550)  # answered deliveries before each kill
MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


def test_deliveries_while_nodes_are_killed_and_restarted_are_each_stored_once(
    cluster: Cluster,
) -> None:
    answered: set[str] = set()
    unanswered: set[str] = set()
    lock = threading.Lock()
    ids = iter(range(10 * DELIVERIES))
    done = threading.Event()
    chaos_done = threading.Event()

    def deliverer(first: int) -> None:
        index = first
        while not done.is_set():
            index = (index + 1) % len(cluster.nodes)
            try:
                lmtp = cluster.lmtp(index)
            except OSError:
                continue  # that node is down: the next one
            try:
                while not done.is_set():
                    with lock:
                        ident = f"{next(ids)}@cluster.example"
                        unanswered.add(ident)
                    message = (
                        f"Subject: delivery\r\nMessage-ID: <{ident}>\r\n\r\n{ident}\r\n"
                    ).encode()
                    lmtp.sendmail("sender@example.org", ["bob@localhost"], message)
                    with lock:  # 250: the transaction committed
                        unanswered.discard(ident)
                        answered.add(ident)
                        if len(answered) >= DELIVERIES and chaos_done.is_set():
                            done.set()
            except (smtplib.SMTPException, OSError):
                continue  # the node died under the delivery: reconnect elsewhere
            finally:
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    lmtp.close()

    threads = [threading.Thread(target=deliverer, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    # Each node in turn is SIGKILLed while deliveries flow and started again; the deliveries
    # go on until there are DELIVERIES answered 250 *and* every kill is done.
    kills = 0
    try:
        for kill, threshold in enumerate(KILL_AT):
            while True:
                with lock:
                    if len(answered) >= threshold:
                        break
                assert all(thread.is_alive() for thread in threads)
                time.sleep(0.01)  # polling the progress
            victim = cluster.nodes[kill % len(cluster.nodes)]
            victim.kill()
            victim.start()
            kills += 1
        with lock:
            chaos_done.set()
            if len(answered) >= DELIVERIES:
                done.set()
    finally:
        chaos_done.set()
        if kills < len(KILL_AT):  # failed: stop the deliveries at once
            done.set()
        for thread in threads:
            thread.join(timeout=300)
        done.set()
    assert kills == len(KILL_AT)
    stored = Counter(
        match.group(1).decode()
        for body in cluster.bodies("bob")
        if (match := MESSAGE_ID.search(body)) is not None
    )
    assert len(answered) >= DELIVERIES
    duplicated = {ident for ident, n in stored.items() if n > 1}
    assert not duplicated
    missing = answered - set(stored)
    assert not missing, sorted(missing)[:10]
    # Whatever else is stored was sent and never answered (the node died before its 250).
    assert set(stored) - answered <= unanswered


# -- the database restarted ------------------------------------------------------------------


def test_postgresql_restarted_mid_session_is_a_temporary_failure_and_loses_nothing(
    cluster: Cluster, postgres: PostgresServer
) -> None:
    cluster.deliver(0, b"Subject: survives\r\n\r\nbody\r\n")
    stored = cluster.bodies()
    client = cluster.login()
    postgres.stop()
    try:
        with pytest.raises(poplib.error_proto) as failed:
            client.retr(1)
        assert failed.value.args[0].startswith(b"-ERR [SYS/TEMP]")
        # The nodes still greet, so HAProxy's health checks keep them UP (fall 2: two checks
        # each while the database is down).
        marks = [server.log().count("header=v2/LOCAL") for server in cluster.nodes]
        for server, mark in zip(cluster.nodes, marks, strict=True):
            server.wait_for_log("header=v2/LOCAL", mark + 2, deadline=TAKEOVER_DEADLINE)
        assert {state.split(" ")[0] for state in cluster.haproxy.states().values()} == {"UP"}
    finally:
        postgres.start()
    client.close()
    client, _ = cluster.login_when_free()
    (_, lines, _) = client.retr(1)
    client.quit()
    assert b"\r\n".join(lines) + b"\r\n" == stored[0].replace(b"\n", b"\r\n")
    assert cluster.bodies() == stored
    for server in cluster.nodes:
        assert "Traceback" not in server.log()
