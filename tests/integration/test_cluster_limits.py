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
from tests.support.passwd import PasswdUser
from tests.support.postgres import PostgresServer
from tests.support.server import MailslotServer, ServerFactory
from tests.support.together import log_in_together
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
            assert await strikes() == 0  # no failure on record: the check's lease
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


async def _look(state: LocalPenaltyState | ClusterPenaltyState, key: str) -> Admission | None:
    """One look at ``key`` (the database's is a statement, the node's memory's is not)."""
    if isinstance(state, ClusterPenaltyState):
        return await state.try_reserve(key)
    return state.try_reserve(key)


@pytest.mark.parametrize("backend", ["local", "postgresql"])
def test_the_penalty_backends_follow_one_policy(postgres: PostgresServer, backend: str) -> None:
    """The PenaltyState contract, for the node's memory and the database alike.  No failure
    on record: one check in flight at once, a second asks again (``None``) until the first
    ends, or goes at once once its lease is released.  After a failure (free): one slot at
    once, then one a gap later, then a refusal when the next slot is more than the cap away;
    a success forgets.  The database's waits come from the database's clock."""
    # A base that is not a whole number: a statement that took it for an integer gave 0.
    policy = PenaltyPolicy(base=7.5, cap=20.0, free=1)
    dsn = upgraded(postgres) if backend == "postgresql" else "unused"

    async def run() -> list[tuple[bool, float] | None]:
        local = LocalPenaltyState(policy, slots=64)
        pool = LazyPool(dsn, size=2)
        state: LocalPenaltyState | ClusterPenaltyState = local
        if backend == "postgresql":
            state = ClusterPenaltyState(pool, policy, local)
        try:
            seen = [await _look(state, "192.0.2.1") for _ in range(3)]
            first_hold = await state.failed("192.0.2.1")
            seen += [await _look(state, "192.0.2.1") for _ in range(3)]
            other = [await _look(state, "192.0.2.2") for _ in range(2)]
            await state.released("192.0.2.2")
            other.append(await _look(state, "192.0.2.2"))
            await state.succeeded("192.0.2.1")
            again = await _look(state, "192.0.2.1")
            hold = await state.failed("192.0.2.1")
        finally:
            await pool.aclose()
        answers = [*seen, *other, again]
        return [None if a is None else (a.allowed, a.wait) for a in answers] + [
            (True, first_hold),
            (True, hold),
        ]

    got = asyncio.run(run())
    assert got[:3] == [(True, 0.0), None, None]  # one check in flight; the others wait
    assert got[3] == (True, 0.0)  # after the (free) first failure: a slot at once
    assert got[4] is not None and got[4][0] and 7 < got[4][1] <= 7.5  # a gap (7.5 s) on
    assert got[5] == (False, 20.0)  # refused: answered after the cap
    assert got[6:9] == [(True, 0.0), None, (True, 0.0)]  # its own; a lease released
    assert got[9] == (True, 0.0)  # a success forgot the address
    assert got[10] == (True, 0.0)  # a first failure, free: no hold
    assert got[11] == (True, 0.0)  # and again after the success


@pytest.mark.parametrize("backend", ["local", "postgresql"])
def test_a_waiter_goes_when_the_check_in_flight_ends(
    postgres: PostgresServer, backend: str
) -> None:
    """reserve() waits for a check in flight, polling the shared state; a success there lets
    it check at once, a failure puts it on the schedule (7.5 s: the first strike's gap)."""
    policy = PenaltyPolicy(base=7.5, cap=20.0)
    dsn = upgraded(postgres) if backend == "postgresql" else "unused"

    async def run() -> tuple[Admission, Admission]:
        local = LocalPenaltyState(policy, slots=64)
        pool = LazyPool(dsn, size=2)
        state: PenaltyState = local
        if backend == "postgresql":
            state = ClusterPenaltyState(pool, policy, local)
        try:
            answers = []
            for ending in (state.succeeded, state.failed):
                assert await state.reserve("192.0.2.3") == Admission(True, 0.0)
                waiter = asyncio.create_task(state.reserve("192.0.2.3"))
                await asyncio.sleep(0.2)
                assert not waiter.done()  # its lease is 20 s long
                await ending("192.0.2.3")
                answers.append(await asyncio.wait_for(waiter, 10))
        finally:
            await pool.aclose()
        return answers[0], answers[1]

    after_success, after_failure = asyncio.run(run())
    assert after_success == Admission(True, 0.0)
    assert after_failure.allowed and 7 < after_failure.wait <= 7.5


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
        first.wait_for_log("login failed: user=alice")
        for _ in range(2):
            wire = _wire(second)
            wires.append(wire)
            assert wire.command("USER alice").startswith(b"+OK")
            wire.send(b"PASS wrong-password\r\n")
        second.wait_for_log("login refused, too many failures from 127.0.0.1")
    finally:
        for wire in wires:
            wire.close()
    assert "login failed: user=alice" not in second.log()


ACCOUNTS = [PasswdUser(f"user{n}", f"secret-{n}", scheme="SHA512-CRYPT") for n in range(6)]


def test_right_passwords_at_once_over_two_nodes_are_neither_delayed_nor_refused(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    """Six right-password logins at the same moment from 127.0.0.1, three on each node:
    with every check a strike the second waited 30 s and the rest were refused; now the
    checks go one at a time across the nodes, and all six log in."""
    slow = {"failure_delay": 30.0, "failure_delay_max": 30.0, "users": ACCOUNTS}
    nodes = [node(mailslot_factory, dsn, name, **slow) for name in ("node-a", "node-b")]
    wires = [_wire(nodes[n % 2]) for n in range(len(ACCOUNTS))]
    replies, elapsed = log_in_together(wires, ACCOUNTS)
    assert [r[:3] for r in replies] == [b"+OK"] * 6, replies
    assert not any("login refused" in server.log() for server in nodes)
    assert elapsed < 30.0  # no penalty slot was waited for (a bound on the configured gap)


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
    second.wait_for_log("too many connections from your address")  # logged after the close
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
    (its check after a failure waits a gap), and the failure is logged once, not per call."""
    policy = PenaltyPolicy(base=10.0, cap=20.0)
    local = LocalPenaltyState(policy, slots=64)

    async def run() -> list[tuple[bool, float]]:
        pool = LazyPool("postgresql://mailslot@127.0.0.1:1/none", size=1, connect_timeout=2)
        state = ClusterPenaltyState(pool, policy, local)
        try:
            seen = [await state.reserve("192.0.2.9")]
            await state.failed("192.0.2.9")
            seen.append(await state.reserve("192.0.2.9"))
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
