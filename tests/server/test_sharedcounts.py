"""The node's shared counters (server/sharedcounts.py) and limits (server/sharedlimits.py),
across real forked processes."""

from __future__ import annotations

import os

import pytest

from mailslot.server.sharedcounts import SharedCounts
from mailslot.server.sharedlimits import SharedLimits, table_for


def _in_child(action: object) -> None:
    """Run ``action()`` in a forked child that exits without cleaning up (as SIGKILL would)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert callable(action)
            code = 0 if action() is not False else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_limit_holds_across_processes() -> None:
    counts = SharedCounts(256, 8)
    assert counts.add("a:192.0.2.1", 1, 2)
    _in_child(lambda: counts.add("a:192.0.2.1", 1, 2))  # the second slot, taken by a child
    assert counts.total("a:192.0.2.1") == 2
    assert not counts.add("a:192.0.2.1", 1, 2)
    _in_child(lambda: not counts.add("a:192.0.2.1", 1, 2))
    assert counts.add("a:192.0.2.2", 1, 2)


def test_reclaim_gives_back_only_the_dead_owners_counts() -> None:
    counts = SharedCounts(256, 8)
    assert counts.add("u:alice", 1, 5)
    children: list[int] = []

    def take() -> bool:
        return counts.add("u:alice", 1, 5) and counts.add("*", 1, 100)

    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            os._exit(0 if take() else 1)
        children.append(pid)
        os.waitpid(pid, 0)
    assert counts.total("u:alice") == 3
    assert counts.reclaim(children[0]) == 2
    assert counts.total("u:alice") == 2
    assert counts.total("*") == 1
    assert counts.reclaim(children[0]) == 0
    counts.add("u:alice", -1)  # the parent's own release
    assert counts.total("u:alice") == 1


def test_a_release_after_a_reclaim_does_not_go_negative() -> None:
    counts = SharedCounts(64, 8)
    assert counts.add("k", 1, 1, owner=4242)
    assert counts.reclaim(4242) == 1
    assert counts.add("k", -1, owner=4242)
    assert counts.total("k") == 0
    assert counts.add("k", 1, 1)


def test_a_full_bucket_refuses_rather_than_overcounts() -> None:
    counts = SharedCounts(2, 2)  # one bucket of two slots
    assert counts.add("a", 1, 10, owner=1)
    assert counts.add("b", 1, 10, owner=1)
    assert not counts.add("c", 1, 10, owner=1)
    assert counts.add("a", 1, 10, owner=1)  # an existing record still counts up
    assert counts.total("a") == 2


@pytest.mark.parametrize("workers", [1, 2, 16])
def test_the_table_is_sized_from_the_limits(workers: int) -> None:
    table = table_for(10_000, workers)
    assert table.ways >= 4 * workers
    assert table.buckets * table.ways >= 4 * 2 * 10_000


def test_shared_limits_group_ipv6_prefixes_and_count_elsewhere() -> None:
    elsewhere = {"a:198.51.100.7": 2, "u:alice": 1}
    limits = SharedLimits(
        SharedCounts(256, 8), 100, 3, 2, ipv6_prefix=48, elsewhere=lambda k: elsewhere.get(k, 0)
    )
    assert limits.acquire_connection("2001:db8::1") is None
    assert limits.acquire_connection("2001:db8:0:ffff::1") is None  # the same /48
    assert limits.acquire_connection("2001:db8:1::1") is None
    assert limits.acquire_connection("2001:db8::2") is None
    assert limits.acquire_connection("2001:db8::3") == "too many connections from your address"
    # Two connections on other nodes: one left here.
    assert limits.acquire_connection("198.51.100.7") is None
    assert limits.acquire_connection("198.51.100.7") == "too many connections from your address"
    # A user's count is the node's alone (the other nodes' "u:alice" is not asked): across
    # nodes the maildrop lease keeps a user to one session, without the published lag.
    assert limits.acquire_user("alice")
    assert limits.acquire_user("alice")
    assert not limits.acquire_user("alice")
    assert limits.held == {
        "a:2001:db8::/48": 3,
        "a:2001:db8:1::/48": 1,
        "a:198.51.100.7": 1,
        "u:alice": 2,
    }
    for address in ["2001:db8::1", "2001:db8::2", "2001:db8:0:ffff::1", "198.51.100.7"]:
        limits.release_connection(address)
    limits.release_user("alice")
    limits.release_user("alice")
    assert limits.node_total("*") == 1
    assert limits.held == {"a:2001:db8:1::/48": 1}


def test_shared_limits_total_and_process_cap() -> None:
    limits = SharedLimits(SharedCounts(256, 8), 2, 10, 1, process_connections=5)
    assert limits.acquire_connection("192.0.2.1") is None
    assert limits.acquire_connection("192.0.2.2") is None
    assert limits.acquire_connection("192.0.2.3") == "too many connections"
    assert limits.node_total("a:192.0.2.3") == 0  # a refusal takes nothing
    capped = SharedLimits(SharedCounts(256, 8), 100, 10, 1, process_connections=1)
    assert capped.acquire_connection("192.0.2.1") is None
    assert capped.acquire_connection("192.0.2.2") == "too many connections"
    assert capped.move_connection("192.0.2.1", "198.51.100.1") is None
    assert capped.node_total("a:192.0.2.1") == 0
    assert capped.node_total("a:198.51.100.1") == 1
