"""Connection and session counters (server/limits.py): total, per source address, per user."""

from __future__ import annotations

import asyncio

from mailslot.server.limits import Limits


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
