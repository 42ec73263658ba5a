"""The failed-login penalty (server/penalty.py, server/sharedtable.py) under a fake clock.

One view per client address: from an address with no failure on record checks go one at a
time without a gap (a waiter goes when the check in flight ends, or its lease runs out); with
a failure on record checks are reserved one after another however many connections ask at
once, the gaps double from ``base`` to ``cap`` after ``free`` strikes; a success or
``forget_after`` seconds forget the address, IPv6 clients count per prefix, the table is
shared with forked processes and its memory is bounded.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os

import pytest

from mailslot.server.penalty import (
    MIN_LEASE,
    POLL_FIRST,
    POLL_MAX,
    Admission,
    LocalPenaltyState,
    PenaltyPolicy,
    address_key,
)
from mailslot.server.sharedtable import SharedTable


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def state(clock: FakeClock, free: int = 0, slots: int = 1024) -> LocalPenaltyState:
    policy = PenaltyPolicy(base=2.0, cap=15.0, free=free, forget_after=900.0)
    return LocalPenaltyState(policy, slots=slots, clock=clock)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_one_connection_waits_2_4_8_15_after_each_failure(clock: FakeClock) -> None:
    penalty = state(clock)
    holds = []
    for _ in range(6):
        assert run(penalty.reserve("192.0.2.1")) == Admission(True, 0.0)
        hold = run(penalty.failed("192.0.2.1"))
        holds.append(hold)
        clock.advance(hold)  # the client's next attempt comes when the reply does
    assert holds == [2.0, 4.0, 8.0, 15.0, 15.0, 15.0]


def test_right_passwords_at_once_from_a_clean_address_go_one_at_a_time(
    clock: FakeClock,
) -> None:
    """Six logins at once (a client with six accounts): while one check is in flight the
    others wait for it, not for a penalty slot; each success lets the next go at once, and
    none is refused or strikes the address."""
    penalty = state(clock)
    waiting = 6
    while waiting:
        assert penalty.try_reserve("192.0.2.1") == Admission(True, 0.0)
        waiting -= 1
        assert [penalty.try_reserve("192.0.2.1") for _ in range(waiting)] == [None] * waiting
        clock.advance(0.1)  # the check
        run(penalty.succeeded("192.0.2.1"))
    assert penalty.strikes("192.0.2.1") == 0
    assert not penalty.in_flight("192.0.2.1")


def test_parallel_guessers_get_one_check_then_successive_slots(clock: FakeClock) -> None:
    """Before the first failure is known, one check in flight; after it, the schedule."""
    penalty = state(clock)
    answers = [penalty.try_reserve("192.0.2.1") for _ in range(50)]
    assert answers[0] == Admission(True, 0.0)
    assert answers[1:] == [None] * 49  # ask again: the first check is in flight
    clock.advance(0.1)
    assert run(penalty.failed("192.0.2.1")) == 2.0
    answers = [penalty.try_reserve("192.0.2.1") for _ in range(49)]
    allowed = [a.wait for a in answers if a is not None and a.allowed]
    # 2 s after the failure, then 2 + 4, then 6 + 8: the next would be 29 s away, past the
    # 15 s cap, and is refused, its reply held for the cap as a checked one's may be.
    assert allowed == [2.0, 6.0, 14.0]
    assert all(a == Admission(False, 15.0) for a in answers[3:])
    assert penalty.strikes("192.0.2.1") == 4


def test_a_waiter_goes_as_soon_as_the_check_in_flight_ends(clock: FakeClock) -> None:
    """reserve() looks again after short pauses; the check in flight succeeds (another
    worker) during the third pause: the waiter's check goes then, without a gap."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock.advance(seconds)
        if len(pauses) == 3:
            await penalty.succeeded("192.0.2.1")

    policy = PenaltyPolicy(base=2.0, cap=15.0)
    penalty = LocalPenaltyState(policy, slots=64, clock=clock, sleep=sleep)
    assert run(penalty.reserve("192.0.2.1")) == Admission(True, 0.0)
    assert run(penalty.reserve("192.0.2.1")) == Admission(True, 0.0)
    assert len(pauses) == 3
    assert pauses[0] == POLL_FIRST and all(p <= POLL_MAX for p in pauses)


def test_a_waiter_behind_a_failure_takes_the_schedules_slot(clock: FakeClock) -> None:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await penalty.failed("192.0.2.1")

    penalty = LocalPenaltyState(PenaltyPolicy(), slots=64, clock=clock, sleep=sleep)
    assert run(penalty.reserve("192.0.2.1")) == Admission(True, 0.0)
    assert run(penalty.reserve("192.0.2.1")) == Admission(True, 2.0)


def test_the_lease_of_a_check_whose_process_died_runs_out(clock: FakeClock) -> None:
    """A worker killed during a check never reports it: after the lease (failure_delay_max,
    at least MIN_LEASE) the next check goes anyway."""
    penalty = state(clock)
    assert penalty.policy.lease == 15.0
    assert PenaltyPolicy(base=0.5, cap=0.5).lease == MIN_LEASE
    assert penalty.try_reserve("192.0.2.1") == Admission(True, 0.0)
    clock.advance(14.9)
    assert penalty.try_reserve("192.0.2.1") is None
    clock.advance(0.2)
    assert penalty.try_reserve("192.0.2.1") == Admission(True, 0.0)
    assert penalty.strikes("192.0.2.1") == 0


def test_a_check_without_a_verdict_releases_its_lease(clock: FakeClock) -> None:
    penalty = state(clock)
    assert penalty.try_reserve("192.0.2.1") == Admission(True, 0.0)
    run(penalty.released("192.0.2.1"))  # the user database failed
    assert penalty.try_reserve("192.0.2.1") == Admission(True, 0.0)
    run(penalty.failed("192.0.2.1"))
    clock.advance(2.0)
    assert penalty.try_reserve("192.0.2.1") == Admission(True, 0.0)
    run(penalty.released("192.0.2.1"))  # with a failure on record the strike stays
    assert penalty.strikes("192.0.2.1") == 2
    assert penalty.try_reserve("192.0.2.1") == Admission(True, 4.0)


def test_a_success_while_a_guess_is_in_flight(clock: FakeClock) -> None:
    """With free attempts two checks may be in flight; one is a real user's and succeeds,
    forgetting the address (the NAT trade-off): the guessers get one check at once, and the
    guess that then fails puts the address back on the schedule."""
    penalty = state(clock, free=2)
    assert penalty.try_reserve("a") == Admission(True, 0.0)
    run(penalty.failed("a"))  # a first failure, free
    assert penalty.try_reserve("a") == Admission(True, 0.0)  # the guess, in flight
    assert penalty.try_reserve("a") == Admission(True, 0.0)  # the user's
    run(penalty.succeeded("a"))
    assert penalty.try_reserve("a") == Admission(True, 0.0)  # another guess, at once
    assert penalty.try_reserve("a") is None  # and no more while it runs
    assert run(penalty.failed("a")) == 0.0  # the first guess fails: a first strike, free
    run(penalty.failed("a"))
    assert penalty.strikes("a") == 1
    # The schedule again, from its first strike: two more free checks, then the gaps.
    answers = [penalty.try_reserve("a") for _ in range(4)]
    assert [a.wait for a in answers if a is not None] == [0.0, 0.0, 2.0, 6.0]


def _simulate(connections: int, check: float, seconds: float = 600.0) -> tuple[int, int]:
    """``connections`` guessers from one address, each trying again as soon as it is
    answered, a check taking ``check`` seconds, a waiter looking again every POLL_MAX:
    (checks made in ``seconds``, most checks in flight at once before the first failure)."""
    clock = FakeClock(0.0)
    penalty = state(clock)
    events: list[tuple[float, int, int, str]] = [(0.0, n, n, "try") for n in range(connections)]
    heapq.heapify(events)
    order = connections
    checks = in_flight = most = 0
    failed_once = False
    while events:
        at, _, who, what = heapq.heappop(events)
        if at > seconds:
            break
        clock.now = at
        order += 1
        if what == "try":
            answer = penalty.try_reserve("192.0.2.1")
            if answer is None:
                heapq.heappush(events, (at + POLL_MAX, order, who, "try"))
            elif answer.allowed:
                heapq.heappush(events, (at + answer.wait, order, who, "check"))
            else:
                heapq.heappush(events, (at + answer.wait, order, who, "try"))
        elif what == "check":
            checks += 1
            in_flight += 1
            if not failed_once:
                most = max(most, in_flight)
            heapq.heappush(events, (at + check, order, who, "fail"))
        else:
            in_flight -= 1
            failed_once = True
            hold = run(penalty.failed("192.0.2.1"))
            heapq.heappush(events, (at + hold, order, who, "try"))
    return checks, most


@pytest.mark.parametrize("check", [0.001, 0.5])
def test_checks_per_minute_do_not_grow_with_connections(check: float) -> None:
    """50 or 200 connections get no more checks in 10 minutes than one does, and one check
    in flight until the first failure is known.  Beyond one more, they gain up to one
    ``check`` per slot (a slot reserved ahead does not wait for the check before it to end,
    as one connection's next attempt does): 43 against 41 with half-second checks."""
    one, _ = _simulate(1, check)
    for connections in (50, 200):
        many, most = _simulate(connections, check)
        assert most == 1
        assert one <= many <= one + 1 + math.ceil(one * check / 15.0)


def test_free_attempts_are_not_delayed(clock: FakeClock) -> None:
    penalty = state(clock, free=3)
    holds = []
    for _ in range(6):
        assert run(penalty.reserve("a")) == Admission(True, 0.0)
        holds.append(run(penalty.failed("a")))
        clock.advance(holds[-1])
    assert holds == [0.0, 0.0, 0.0, 2.0, 4.0, 8.0]


def test_success_resets_the_address(clock: FakeClock) -> None:
    penalty = state(clock)
    run(penalty.reserve("192.0.2.1"))
    run(penalty.failed("192.0.2.1"))
    run(penalty.succeeded("192.0.2.1"))
    assert penalty.strikes("192.0.2.1") == 0
    assert run(penalty.reserve("192.0.2.1")) == Admission(True, 0.0)


def test_failures_are_forgotten_after_forget_after(clock: FakeClock) -> None:
    penalty = state(clock)
    run(penalty.reserve("a"))
    run(penalty.failed("a"))
    for _ in range(2):
        run(penalty.reserve("a"))
    assert penalty.strikes("a") == 3
    clock.advance(900.5)
    assert penalty.strikes("a") == 0
    assert run(penalty.reserve("a")) == Admission(True, 0.0)


def test_addresses_are_independent(clock: FakeClock) -> None:
    penalty = state(clock)
    assert penalty.try_reserve("192.0.2.1") == Admission(True, 0.0)
    assert penalty.try_reserve("192.0.2.2") == Admission(True, 0.0)  # not in flight
    run(penalty.failed("192.0.2.1"))
    assert penalty.try_reserve("192.0.2.3") == Admission(True, 0.0)  # not on the schedule


def test_zero_base_never_delays(clock: FakeClock) -> None:
    penalty = LocalPenaltyState(PenaltyPolicy(base=0.0, cap=0.0), clock=clock)
    assert [penalty.try_reserve("a") for _ in range(5)] == [Admission(True, 0.0)] * 5
    for _ in range(20):
        assert run(penalty.reserve("a")) == Admission(True, 0.0)
        assert run(penalty.failed("a")) == 0.0


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:db8:0:0:1:2:3:4", "2001:db8::/64"),
        ("2001:db8::ffff", "2001:db8::/64"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
    ],
)
def test_address_keys(address: str, key: str) -> None:
    assert address_key(address) == key


def test_ipv6_prefix_is_configurable() -> None:
    assert address_key("2001:db8:1:2:3::1", 48) == "2001:db8:1::/48"
    assert address_key("2001:db8:1:2:3::1", 128) == "2001:db8:1:2:3::1"


def test_table_memory_is_bounded_and_the_oldest_goes(clock: FakeClock) -> None:
    penalty = state(clock, slots=64)
    size = penalty.table.size
    for n in range(5000):
        clock.advance(0.001)
        run(penalty.failed(f"10.0.{n // 256}.{n % 256}"))
    assert penalty.table.size == size == 64 * 40
    # The newest address is always kept; most of the first ones are gone.
    assert penalty.strikes("10.0.19.135") == 1
    assert sum(penalty.strikes(f"10.0.0.{n}") for n in range(100)) < 20


def test_eviction_in_a_full_bucket_takes_the_least_recently_touched(clock: FakeClock) -> None:
    table = SharedTable(slots=4, ways=4)  # one bucket
    for n, name in enumerate("abcd"):
        table.update(name, lambda _r, n=n: _record(n))
    table.update("e", lambda _r: _record(10))
    assert table.get("a") is None
    assert [table.get(name) is not None for name in "bcde"] == [True] * 4


def _record(touched: float):  # type: ignore[no-untyped-def]
    from mailslot.server.sharedtable import Record

    return Record(1, 0.0, touched)


def test_a_forked_child_sees_and_changes_the_parents_table(clock: FakeClock) -> None:
    penalty = state(clock)
    assert penalty.try_reserve("192.0.2.1") == Admission(True, 0.0)
    pid = os.fork()
    if pid == 0:  # the child, as a second worker: the parent's check is in flight
        code = 1
        try:
            if penalty.try_reserve("192.0.2.1") is None:
                run(penalty.failed("192.0.2.1"))  # and the check it made failed
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert penalty.strikes("192.0.2.1") == 1
    assert penalty.try_reserve("192.0.2.1") == Admission(True, 2.0)
