"""The failed-login penalty (server/penalty.py, server/sharedtable.py) under a fake clock.

One view per client address: checks are reserved one after another however many
connections ask at once, the gaps double from ``base`` to ``cap`` after ``free`` strikes, a
success or ``forget_after`` seconds forget the address, IPv6 clients count per prefix, the
table is shared with forked processes and its memory is bounded.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from mailslot.server.penalty import (
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


def test_parallel_attempts_get_successive_slots_not_the_same_one(clock: FakeClock) -> None:
    penalty = state(clock)
    answers = [run(penalty.reserve("192.0.2.1")) for _ in range(50)]
    allowed = [a.wait for a in answers if a.allowed]
    # 0, then 2 s, then 2 + 4, then 6 + 8: the fifth would be 29 s away, past the 15 s cap.
    assert allowed == [0.0, 2.0, 6.0, 14.0]
    assert all(a == Admission(False, 15.0) for a in answers[4:])
    assert penalty.strikes("192.0.2.1") == 4


def test_checks_per_minute_do_not_grow_with_connections(clock: FakeClock) -> None:
    """200 connections that retry as soon as they are answered: checks in 10 minutes."""

    def checks(connections: int) -> int:
        penalty = state(FakeClock())
        local = penalty._clock
        assert isinstance(local, FakeClock)
        ready = [0.0] * connections  # when each connection sends its next attempt
        count = 0
        while True:
            index = min(range(connections), key=ready.__getitem__)
            local.now = 1000.0 + ready[index]
            if ready[index] > 600:
                return count
            answer = run(penalty.reserve("192.0.2.1"))
            if answer.allowed:
                count += 1
                local.advance(answer.wait)
                answer_at = local.now + run(penalty.failed("192.0.2.1"))
            else:
                answer_at = local.now + answer.wait
            ready[index] = answer_at - 1000.0

    one = checks(1)
    assert checks(50) <= one + 1
    assert checks(200) <= one + 1


def test_free_attempts_are_not_delayed(clock: FakeClock) -> None:
    penalty = state(clock, free=3)
    assert [run(penalty.reserve("a")).wait for _ in range(4)] == [0.0, 0.0, 0.0, 0.0]
    assert run(penalty.reserve("a")) == Admission(True, 2.0)


def test_success_resets_the_address(clock: FakeClock) -> None:
    penalty = state(clock)
    run(penalty.reserve("192.0.2.1"))
    run(penalty.failed("192.0.2.1"))
    run(penalty.succeeded("192.0.2.1"))
    assert penalty.strikes("192.0.2.1") == 0
    assert run(penalty.reserve("192.0.2.1")) == Admission(True, 0.0)


def test_failures_are_forgotten_after_forget_after(clock: FakeClock) -> None:
    penalty = state(clock)
    for _ in range(3):
        run(penalty.reserve("a"))
    clock.advance(900.5)
    assert penalty.strikes("a") == 0
    assert run(penalty.reserve("a")) == Admission(True, 0.0)


def test_addresses_are_independent(clock: FakeClock) -> None:
    penalty = state(clock)
    for _ in range(4):
        run(penalty.reserve("192.0.2.1"))
    assert run(penalty.reserve("192.0.2.2")) == Admission(True, 0.0)


def test_zero_base_never_delays(clock: FakeClock) -> None:
    penalty = LocalPenaltyState(PenaltyPolicy(base=0.0, cap=0.0), clock=clock)
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
        run(penalty.reserve(f"10.0.{n // 256}.{n % 256}"))
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
    run(penalty.reserve("192.0.2.1"))
    pid = os.fork()
    if pid == 0:  # the child: two more checks, as a second worker would take them
        try:
            run(penalty.reserve("192.0.2.1"))
            run(penalty.reserve("192.0.2.1"))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert penalty.strikes("192.0.2.1") == 3
