"""Connection and session counters (server/limits.py): total, per source address, per user."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from mailslot.server.limits import Limits, RefusalLog


def test_total_connections_are_capped() -> None:
    limits = Limits(max_connections=3, per_ip=10, per_user=1)
    addresses = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert [limits.acquire_connection(a) for a in addresses] == [None, None, None]
    assert limits.acquire_connection("192.0.2.4") == "too many connections"
    assert limits.connections == 3
    limits.release_connection("192.0.2.2")
    assert limits.acquire_connection("192.0.2.4") is None
    assert limits.connections == 3


def test_per_ip_cap_leaves_other_addresses_alone() -> None:
    limits = Limits(max_connections=100, per_ip=2, per_user=1)
    assert limits.acquire_connection("192.0.2.1") is None
    assert limits.acquire_connection("192.0.2.1") is None
    assert limits.acquire_connection("192.0.2.1") == "too many connections from your address"
    assert limits.acquire_connection("192.0.2.2") is None
    assert limits.connections == 3


def test_refusal_takes_no_slot() -> None:
    limits = Limits(max_connections=100, per_ip=1, per_user=1)
    assert limits.acquire_connection("192.0.2.1") is None
    for _ in range(5):
        assert limits.acquire_connection("192.0.2.1") is not None
    assert limits.connections == 1
    limits.release_connection("192.0.2.1")
    assert limits.connections == 0
    assert limits.acquire_connection("192.0.2.1") is None


def test_release_frees_the_per_ip_slot_and_forgets_the_address() -> None:
    limits = Limits(max_connections=100, per_ip=1, per_user=1)
    for _ in range(3):
        assert limits.acquire_connection("192.0.2.1") is None
        limits.release_connection("192.0.2.1")
    assert limits.connections == 0
    assert "192.0.2.1" not in limits._by_ip


def test_a_proxy_header_moves_the_count_to_the_client_address() -> None:
    limits = Limits(max_connections=100, per_ip=1, per_user=1)
    assert limits.acquire_connection("192.0.2.1") is None  # the proxy, before the header
    assert limits.move_connection("192.0.2.1", "198.51.100.1") is None
    assert limits.connections == 1
    # The proxy's slot is free again; the client's is taken.
    assert limits.acquire_connection("192.0.2.1") is None
    assert limits.acquire_connection("198.51.100.1") == "too many connections from your address"
    limits.release_connection("198.51.100.1")
    limits.release_connection("192.0.2.1")
    assert limits.connections == 0
    assert not limits._by_ip


def test_a_move_to_an_address_over_its_limit_is_refused_and_leaves_the_count() -> None:
    limits = Limits(max_connections=100, per_ip=1, per_user=1)
    assert limits.acquire_connection("198.51.100.1") is None
    assert limits.acquire_connection("192.0.2.1") is None
    refusal = limits.move_connection("192.0.2.1", "198.51.100.1")
    assert refusal == "too many connections from your address"
    assert limits.connections == 2
    assert limits.acquire_connection("192.0.2.1") is not None  # still held by the proxy
    assert limits.move_connection("192.0.2.1", "192.0.2.1") is None  # UNKNOWN, LOCAL
    assert limits.connections == 2


class FakeLater:
    """``call_later`` for RefusalLog, run by hand."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def __call__(self, delay: float, callback: Callable[[], None]) -> FakeLater:
        self.calls.append((delay, callback))
        return self

    def cancel(self) -> None:
        self.cancelled += 1


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.refusals"]


def test_a_flood_from_one_address_is_one_line_then_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.refusals")
    now = [100.0]
    later = FakeLater()
    log = RefusalLog(logging.getLogger("test.refusals"), 10.0, clock=lambda: now[0], later=later)
    for _ in range(1000):
        log.refused("192.0.2.1", "too many connections from your address")
    log.refused("192.0.2.2", "too many connections")
    assert refusal_lines(caplog) == [
        "peer=192.0.2.1 refused: too many connections from your address "
        "(further refusals counted for 10s)",
        "peer=192.0.2.2 refused: too many connections (further refusals counted for 10s)",
    ]
    # One timer for the window's summary, due when the window ends.
    ((delay, callback),) = later.calls
    assert delay == 10.0
    now[0] = 110.0
    callback()
    assert refusal_lines(caplog)[2:] == ["peer=192.0.2.1 refused 999 more connections in 10s"]
    # A new window: the first refusal is logged again.
    log.refused("192.0.2.1", "too many connections from your address")
    assert len(refusal_lines(caplog)) == 4


def test_a_window_that_ended_unnoticed_is_summed_up_by_the_next_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.refusals")
    now = [0.0]
    later = FakeLater()
    log = RefusalLog(logging.getLogger("test.refusals"), 10.0, clock=lambda: now[0], later=later)
    log.refused("192.0.2.1", "r")
    log.refused("192.0.2.1", "r")
    now[0] = 25.0
    log.refused("192.0.2.1", "r")
    assert refusal_lines(caplog)[1:] == [
        "peer=192.0.2.1 refused 1 more connections in 10s",
        "peer=192.0.2.1 refused: r (further refusals counted for 10s)",
    ]
    assert later.cancelled == 1  # the pending summary timer is not left to fire again


def test_refusals_from_many_addresses_take_bounded_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.refusals")
    log = RefusalLog(
        logging.getLogger("test.refusals"),
        10.0,
        max_addresses=3,
        clock=lambda: 0.0,
        later=FakeLater(),
    )
    for n in range(100):
        log.refused(f"2001:db8::{n:x}", "r")
    assert len(log._counts) == 3
    assert len(refusal_lines(caplog)) == 3
    log.flush()
    assert refusal_lines(caplog)[3:] == ["refused 97 connections from other addresses in 10s"]


def test_per_user_sessions() -> None:
    limits = Limits(max_connections=100, per_ip=100, per_user=2)
    assert limits.acquire_user("alice")
    assert limits.acquire_user("alice")
    assert not limits.acquire_user("alice")
    assert limits.acquire_user("bob")
    limits.release_user("alice")
    assert limits.acquire_user("alice")
    assert not limits.acquire_user("alice")


def test_release_user_forgets_the_user() -> None:
    limits = Limits(max_connections=100, per_ip=100, per_user=1)
    for _ in range(3):
        assert limits.acquire_user("alice")
        limits.release_user("alice")
    assert "alice" not in limits._by_user


def test_user_limit_is_independent_of_connection_limits() -> None:
    limits = Limits(max_connections=1, per_ip=1, per_user=1)
    assert limits.acquire_connection("192.0.2.1") is None
    assert limits.acquire_user("alice")
    assert limits.acquire_user("bob")
    assert limits.acquire_connection("192.0.2.2") == "too many connections"


def test_read_deadlines_fire_in_order_never_early_and_forget_discarded_sessions() -> None:
    from typing import cast

    from mailslot.server.session import ReadDeadlines, Session

    fired: list[tuple[str, float]] = []

    class Fake:
        def __init__(self, name: str, deadline: float) -> None:
            self.name, self.deadline = name, deadline

        def _expire(self) -> None:
            fired.append((self.name, asyncio.get_running_loop().time() - self.deadline))

    async def scenario() -> None:
        deadlines = ReadDeadlines(0.01)
        now = asyncio.get_running_loop().time()
        fakes = [Fake(n, now + d) for n, d in (("late", 0.05), ("early", 0.02), ("gone", 0.03))]
        for fake in fakes:
            deadlines.add(cast(Session, fake), deadlines.slot(fake.deadline))
        gone = fakes[2]
        deadlines.discard(cast(Session, gone), deadlines.slot(gone.deadline))
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert [name for name, _ in fired] == ["early", "late"]
    assert all(lateness >= 0 for _, lateness in fired)
