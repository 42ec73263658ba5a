"""The per-address failed-login penalty (server/penalty.py) under a fake clock.

2 s for the first failure, doubling to the 15 s cap; a success or ``forget_after`` seconds
without failures resets it; each address has its own count; memory stays bounded.
"""

from __future__ import annotations

import pytest

from mailslot.server.penalty import FailurePenalty


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


@pytest.fixture
def penalty(clock: FakeClock) -> FailurePenalty:
    return FailurePenalty(base=2.0, cap=15.0, forget_after=900.0, clock=clock)


def test_delay_doubles_from_two_seconds_to_the_cap(penalty: FailurePenalty) -> None:
    delays = [penalty.failed("192.0.2.1") for _ in range(7)]
    assert delays == [2.0, 4.0, 8.0, 15.0, 15.0, 15.0, 15.0]
    assert penalty.failures("192.0.2.1") == 7


def test_many_failures_stay_at_the_cap(penalty: FailurePenalty) -> None:
    for _ in range(200):
        delay = penalty.failed("192.0.2.1")
    assert delay == 15.0


def test_success_resets_the_count(penalty: FailurePenalty) -> None:
    penalty.failed("192.0.2.1")
    penalty.failed("192.0.2.1")
    penalty.succeeded("192.0.2.1")
    assert penalty.failures("192.0.2.1") == 0
    assert penalty.failed("192.0.2.1") == 2.0


def test_success_from_an_unknown_address_is_harmless(penalty: FailurePenalty) -> None:
    penalty.succeeded("192.0.2.9")
    assert penalty.failures("192.0.2.9") == 0


def test_failures_are_forgotten_after_forget_after(
    penalty: FailurePenalty, clock: FakeClock
) -> None:
    for _ in range(3):
        penalty.failed("192.0.2.1")
    clock.advance(900.5)
    assert penalty.failed("192.0.2.1") == 2.0
    assert penalty.failures("192.0.2.1") == 1


def test_failures_within_forget_after_keep_counting(
    penalty: FailurePenalty, clock: FakeClock
) -> None:
    penalty.failed("192.0.2.1")
    clock.advance(899.0)
    assert penalty.failed("192.0.2.1") == 4.0
    # The window runs from the last failure, not the first.
    clock.advance(899.0)
    assert penalty.failed("192.0.2.1") == 8.0


def test_addresses_are_independent(penalty: FailurePenalty) -> None:
    for _ in range(4):
        penalty.failed("192.0.2.1")
    assert penalty.failed("192.0.2.2") == 2.0
    assert penalty.failed("2001:db8::1") == 2.0
    penalty.succeeded("192.0.2.2")
    assert penalty.failures("192.0.2.1") == 4
    assert penalty.failed("192.0.2.1") == 15.0


def test_zero_base_means_no_delay_but_still_counts(clock: FakeClock) -> None:
    penalty = FailurePenalty(base=0.0, cap=0.0, clock=clock)
    assert [penalty.failed("192.0.2.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert penalty.failures("192.0.2.1") == 3


def test_memory_is_bounded_by_max_addresses(clock: FakeClock) -> None:
    penalty = FailurePenalty(clock=clock, max_addresses=100)
    for n in range(10_000):
        clock.advance(0.001)
        penalty.failed(f"10.0.{n // 256}.{n % 256}")
        assert len(penalty._records) <= 100
    # The newest address is always kept.
    assert penalty.failures("10.0.39.15") == 1


def test_eviction_drops_stale_records_before_fresh_ones(clock: FakeClock) -> None:
    penalty = FailurePenalty(clock=clock, forget_after=900.0, max_addresses=4)
    for address in ("a", "b", "c"):
        penalty.failed(address)
    clock.advance(901.0)
    penalty.failed("d")
    penalty.failed("d")
    penalty.failed("e")  # table full: the stale a, b, c go, d keeps its count
    assert penalty.failures("d") == 2
    assert penalty.failures("e") == 1
    assert penalty.failures("a") == 0


def test_eviction_when_nothing_is_stale_drops_the_oldest(clock: FakeClock) -> None:
    penalty = FailurePenalty(clock=clock, max_addresses=4)
    for address in ("a", "b", "c", "d"):
        clock.advance(1.0)
        penalty.failed(address)
    penalty.failed("d")
    clock.advance(1.0)
    penalty.failed("e")
    assert penalty.failures("a") == 0
    assert penalty.failures("b") == 0
    assert penalty.failures("d") == 2
    assert penalty.failures("e") == 1
