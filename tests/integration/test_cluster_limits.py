"""The failed-login penalty and the per-address limit across nodes of one PostgreSQL
(mailslot.store.postgresql.cluster): real ``mailslot serve`` processes, real TLS, a real
private PostgreSQL (tests/support/postgres.py).  Counted from replies and logs, not timed.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import asyncpg
import pytest
from tests.integration.test_postgresql import node, upgraded
from tests.server.procutil import poll
from tests.server.test_proxy import wait_for_log
from tests.support.postgres import PostgresServer
from tests.support.server import MailslotServer, ServerFactory
from tests.support.wire import ConnectionClosed, Pop3Wire

from mailslot.auth.base import AuthenticationFailed
from mailslot.auth.postgresql import PostgresAuthenticator, PostgresUsers
from mailslot.server.penalty import Admission, LocalPenaltyState, PenaltyPolicy, PenaltyState
from mailslot.store.base import MaildropLocked
from mailslot.store.postgresql.cluster import ClusterPenaltyState, clear_node
from mailslot.store.postgresql.gate import PostgresGate
from mailslot.store.postgresql.pool import LazyPool
from mailslot.store.postgresql.store import PostgresStore


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    return upgraded(postgres)


def test_the_postgresql_gate_reads_the_user_with_the_turn_and_forgives_with_the_lease(
    postgres: PostgresServer,
) -> None:
    """PostgresGate (mailslot.store.postgresql.gate): the penalty's turn and the user's row in
    one statement, the same for an unknown user; a wrong password fails either way; the reset
    comes with the maildrop's opening; a client made to wait has its row read after the wait."""
    dsn = upgraded(postgres)
    policy = PenaltyPolicy(base=10.0, cap=20.0, free=2)

    async def run() -> None:
        pool = LazyPool(dsn, size=2)
        penalty = ClusterPenaltyState(pool, policy, LocalPenaltyState(policy, slots=64))
        users = PostgresAuthenticator(pool)
        store = PostgresStore(pool, node="n1")
        await PostgresUsers(pool).add_user("alice", "right", scheme="SHA512-CRYPT")
        await store.deliver("alice", b"Subject: one\n\nbody\n")
        gate = PostgresGate(penalty, users, store, table=users)

        async def strikes() -> object:
            async with pool.acquire() as connection:
                return await connection.fetchval(
                    "SELECT strikes FROM mailslot_penalty WHERE key = '192.0.2.1'"
                )

        try:
            for name in ("alice", "nobody", "not a valid name"):
                admission, checker = await gate.admit("192.0.2.1", name)
                assert admission == Admission(True, 0.0)
                assert checker is not users  # the row came with the turn
                with pytest.raises(AuthenticationFailed):
                    await checker.authenticate(name, "wrong")
                await penalty.failed("192.0.2.1")
            assert await strikes() == 3
            admission, checker = await gate.admit("192.0.2.1", "alice")
            assert admission.allowed and admission.wait > 0
            assert checker is users  # read again after the wait
            await penalty.succeeded("192.0.2.1")
            admission, checker = await gate.admit("192.0.2.1", "alice")
            user = await checker.authenticate("alice", "right")
            assert user.name == "alice"
            assert await strikes() == 1
            maildrop = await gate.open("192.0.2.1", user)
            assert await strikes() is None  # forgiven by the login's statement
            assert len(maildrop.messages) == 1
            with pytest.raises(MaildropLocked):
                await gate.open("192.0.2.1", user)
            await maildrop.close()
        finally:
            await pool.aclose()

    asyncio.run(run())


def _wire(server: MailslotServer) -> Pop3Wire:
    host, port = server.listener("implicit")
    return Pop3Wire(host, port, tls_context=server.tls_files.client_context())


@pytest.mark.parametrize("backend", ["local", "postgresql"])
def test_the_penalty_backends_follow_one_policy(postgres: PostgresServer, backend: str) -> None:
    """The PenaltyState contract, for the node's memory and the database alike: one slot at
    once (free), then one a gap later, then a refusal when the next slot is more than the cap
    away; a success forgets.  The database's waits come from the database's clock."""
    policy = PenaltyPolicy(base=10.0, cap=20.0, free=1)
    dsn = upgraded(postgres) if backend == "postgresql" else "unused"

    async def run() -> list[tuple[bool, float]]:
        local = LocalPenaltyState(policy, slots=64)
        pool = LazyPool(dsn, size=2)
        state: PenaltyState = local
        if backend == "postgresql":
            state = ClusterPenaltyState(pool, policy, local)
        try:
            seen = [await state.reserve("192.0.2.1") for _ in range(4)]
            other = await state.reserve("192.0.2.2")
            await state.succeeded("192.0.2.1")
            again = await state.reserve("192.0.2.1")
            hold = await state.failed("192.0.2.1")
        finally:
            await pool.aclose()
        return [(a.allowed, a.wait) for a in [*seen, other, again]] + [(True, hold)]

    got = asyncio.run(run())
    allowed = [a for a, _ in got]
    assert allowed == [True, True, True, False, True, True, True]
    waits = [w for _, w in got]
    assert waits[0] == 0 and waits[1] == 0 and waits[4] == 0 and waits[5] == 0
    assert 9 < waits[2] <= 10  # the third check takes the slot a gap (10 s) on
    assert waits[3] == 20  # refused: answered after the cap
    assert waits[6] == 0  # a first failure after a success: gap(1) is free


def test_failures_on_one_node_delay_that_address_on_the_other(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    """(d) 127.0.0.1 fails once on node A (its next check is 30 s away); on node B, of two
    more attempts one waits for that slot and the other is refused without a check.  With a
    penalty per node, node B checked both at once."""
    slow = {"failure_delay": 30.0, "failure_delay_max": 30.0}
    first = node(mailslot_factory, dsn, "node-a", **slow)
    second = node(mailslot_factory, dsn, "node-b", **slow)
    wires: list[Pop3Wire] = []
    try:
        wire = _wire(first)
        wires.append(wire)
        assert wire.command("USER alice").startswith(b"+OK")
        wire.send(b"PASS wrong-password\r\n")  # its -ERR is held 30 s
        wait_for_log(first, "login failed: user=alice")
        for _ in range(2):
            wire = _wire(second)
            wires.append(wire)
            assert wire.command("USER alice").startswith(b"+OK")
            wire.send(b"PASS wrong-password\r\n")
        wait_for_log(second, "login refused, too many failures from 127.0.0.1")
    finally:
        for wire in wires:
            wire.close()
    assert "login failed: user=alice" not in second.log()


def _greeted(server: MailslotServer) -> Pop3Wire | None:
    """A greeted connection, or None: refused (on an implicit-TLS listener, closed before
    the handshake: a refusal costs no TLS)."""
    try:
        wire = _wire(server)
    except (ConnectionClosed, ConnectionResetError):  # closed, or reset: ClientHello unread
        return None
    if wire.greeting.startswith(b"+OK"):
        return wire
    assert wire.greeting.startswith(b"-ERR [SYS/TEMP]"), wire.greeting
    wire.close()
    return None


def test_connections_count_on_every_node_until_their_node_dies(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    """(d) max_connections_per_ip = 2: two connections held on node A leave node B none for
    that address, once B has read A's counts; A killed with SIGKILL stops counting when its
    rows expire, and B takes the address's connections again."""
    options = {"limits": {"max_connections_per_ip": 2, "cluster_refresh": 0.2}}
    first = node(mailslot_factory, dsn, "node-a", **options)  # type: ignore[arg-type]
    second = node(mailslot_factory, dsn, "node-b", **options)  # type: ignore[arg-type]
    held = [w for w in (_greeted(first), _greeted(first)) if w is not None]
    assert len(held) == 2

    def refused_on_second() -> bool:
        wire = _greeted(second)
        if wire is None:
            return True
        wire.close()
        return False

    poll(refused_on_second, "node B to count node A's connections")
    wait_for_log(second, "too many connections from your address")  # logged after the close
    first.kill()
    for wire in held:
        wire.close()

    def accepted_on_second() -> bool:
        wire = _greeted(second)
        if wire is None:
            return False
        wire.close()
        return True

    poll(accepted_on_second, "node A's counts to expire")


def test_a_restarted_node_clears_its_counts(dsn: str) -> None:
    async def run() -> tuple[int, int]:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(
                "INSERT INTO mailslot_limit_counts VALUES "
                "('node-a', 1, '{a:192.0.2.1}', '{5}', now() + interval '1 hour'), "
                "('node-b', 2, '{a:192.0.2.1}', '{5}', now() + interval '1 hour')"
            )
            cleared = await clear_node(connection, "node-a")
            left = await connection.fetchval("SELECT count(*) FROM mailslot_limit_counts")
        finally:
            await connection.close()
        return cleared, int(left)

    assert asyncio.run(run()) == (1, 1)


def test_without_the_database_the_nodes_own_penalty_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database that cannot be reached: the node's own penalty slows the client still
    (its second check waits a gap), and the failure is logged once, not per attempt."""
    policy = PenaltyPolicy(base=10.0, cap=20.0)
    local = LocalPenaltyState(policy, slots=64)

    async def run() -> list[tuple[bool, float]]:
        pool = LazyPool("postgresql://mailslot@127.0.0.1:1/none", size=1, connect_timeout=2)
        state = ClusterPenaltyState(pool, policy, local)
        try:
            seen = [await state.reserve("192.0.2.9") for _ in range(2)]
        finally:
            await pool.aclose()
        return [(a.allowed, a.wait) for a in seen]

    got = asyncio.run(run())
    assert got[0] == (True, 0.0)
    assert got[1][0] and got[1][1] > 9
    assert local.strikes("192.0.2.9") == 2
    lines = [r.getMessage() for r in caplog.records if "using this node's own" in r.getMessage()]
    assert len(lines) == 1, lines


GAP = 0.5
DURATION = 4.0


def _guess(server: MailslotServer, until: float, attempts: list[int]) -> None:
    """USER/PASS with wrong passwords over implicit TLS until ``until``, reconnecting."""
    while time.monotonic() < until:
        try:
            with _wire(server) as wire:
                while time.monotonic() < until:
                    assert wire.command("USER alice").startswith(b"+OK")
                    assert wire.command("PASS wrong-password").startswith(b"-ERR [AUTH]")
                    attempts.append(1)
        except (ConnectionClosed, OSError):
            continue


def test_fifty_guessers_over_two_nodes_get_no_more_checks_than_one_connection(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    """(a) across nodes: 25 guessing connections on each of two nodes (each with two
    workers) from one address; the password checks of both nodes together (a "login failed"
    line each) stay within one connection's policy: one at once, then one per GAP."""
    options = {
        "failure_delay": GAP,
        "failure_delay_max": GAP,
        "limits": {"max_bad_commands_before_login": 1000},
        "server": {"workers": 2},
    }
    nodes = [node(mailslot_factory, dsn, name, **options) for name in ("node-a", "node-b")]  # type: ignore[arg-type]
    attempts: list[int] = []
    started = time.monotonic()
    until = started + DURATION
    threads = [
        threading.Thread(target=_guess, args=(nodes[n % 2], until, attempts)) for n in range(50)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    checks = [server.log().count("login failed: user=alice") for server in nodes]
    print(f"attempts={len(attempts)} checks={checks} in {elapsed:.1f}s")
    assert sum(checks) <= 1 + math.ceil(elapsed / GAP) + 1, checks
