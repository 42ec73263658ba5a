"""The connection and session limits over real sockets, with ``[server] workers = 2``.

``max_connections_per_ip``, ``max_connections`` and ``max_sessions_per_user`` are one count
per node (mailslot.server.sharedlimits), whichever worker accepts a connection; the slots of
a worker killed with SIGKILL are given back when the supervisor replaces it.  Counts come from
the replies and the log, never from timings.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import pytest
from tests.server.procutil import children, poll, ready_workers, serving_pids
from tests.server.test_proxy import proxied_wire, v1
from tests.support.server import Listener, MailslotServer, ServerFactory
from tests.support.wire import ConnectionClosed, Pop3Wire

WORKERS = {"server": {"workers": 2}}


def _open(server: MailslotServer, count: int) -> tuple[list[Pop3Wire], int]:
    """``count`` connections, one after another; the greeted ones are kept open.  Returns
    them and how many were refused (``-ERR`` then closed)."""
    host, port = server.starttls
    kept: list[Pop3Wire] = []
    refused = 0
    for _ in range(count):
        wire = Pop3Wire(host, port)
        if wire.greeting.startswith(b"+OK"):
            kept.append(wire)
        else:
            assert wire.greeting.startswith(b"-ERR [SYS/TEMP]"), wire.greeting
            refused += 1
            wire.close()
    return kept, refused


def _fill(server: MailslotServer, count: int) -> list[Pop3Wire]:
    """``count`` greeted connections, held open; refusals while the slots of connections
    closed just before are still being released are tried again."""
    kept: list[Pop3Wire] = []

    def more() -> bool:
        wires, _ = _open(server, 1)
        kept.extend(wires)
        return len(kept) == count

    poll(more, f"{count} connections")
    return kept


def _serving(server: MailslotServer) -> list[int]:
    """Both workers, once each has greeted a connection (opened one at a time, so that a
    low per-address limit is not what refuses them)."""
    assert server.process is not None
    parent = server.process.pid
    poll(lambda: len(children(parent)) == 2, "2 worker processes")
    workers = children(parent)
    host, port = server.starttls
    seen: set[int] = set()

    def both() -> bool:
        with Pop3Wire(host, port) as wire:
            if wire.greeting.startswith(b"+OK"):
                seen.update(serving_pids(workers, port, [wire.sock.getsockname()[1]]).values())
        return seen == set(workers)

    poll(both, "every worker to greet")
    return workers


def _close(wires: list[Pop3Wire]) -> None:
    for wire in wires:
        wire.close()


def test_per_ip_limit_holds_across_workers(mailslot_factory: ServerFactory) -> None:
    """(b) The (N+1)th connection from one address is refused whichever worker takes it.
    With a count per worker, two workers admitted up to 2N."""
    limit = 4
    server = mailslot_factory(limits={"max_connections_per_ip": limit}, extra_sections=WORKERS)
    workers = _serving(server)
    kept = _fill(server, limit)
    try:
        more, refused = _open(server, 3 * limit)
        kept += more
        owners = serving_pids(workers, server.starttls[1], [w.sock.getsockname()[1] for w in kept])
        assert (len(more), refused) == (0, 3 * limit), set(owners.values())
    finally:
        _close(kept)
    # Released on close: the address gets its N again.
    poll(lambda: _count_and_close(server, limit) == limit, "the slots to be released")


def _count_and_close(server: MailslotServer, count: int) -> int:
    kept, _ = _open(server, count)
    _close(kept)
    return len(kept)


def test_max_connections_holds_across_workers(mailslot_factory: ServerFactory) -> None:
    server = mailslot_factory(
        limits={"max_connections": 3, "max_connections_per_ip": 100}, extra_sections=WORKERS
    )
    _serving(server)
    kept = _fill(server, 3)
    try:
        more, refused = _open(server, 6)
        kept += more
        assert (len(more), refused) == (0, 6)
    finally:
        _close(kept)


def test_per_ip_limit_groups_an_ipv6_prefix(mailslot_factory: ServerFactory) -> None:
    """Addresses claimed by PROXY headers: two of one /64 share its limit of 1, another /64
    has its own."""
    server = mailslot_factory(
        listeners=[Listener("starttls", proxy_protocol=True)],
        limits={"max_connections_per_ip": 1},
    )
    first = proxied_wire(server, "starttls", v1("2001:db8::1", 1000, "::1", 110))
    try:
        assert first.greeting.startswith(b"+OK")
        same = proxied_wire(server, "starttls", v1("2001:db8::ffff:1", 1001, "::1", 110))
        assert same.greeting.startswith(b"-ERR [SYS/TEMP]"), same.greeting
        same.close()
        other = proxied_wire(server, "starttls", v1("2001:db8:0:1::1", 1002, "::1", 110))
        assert other.greeting.startswith(b"+OK")
        other.close()
    finally:
        first.close()
    server.wait_for_log("too many connections from your address")  # lines are batched


def test_a_killed_workers_connections_are_given_back(mailslot_factory: ServerFactory) -> None:
    """A worker killed with SIGKILL never releases its slots itself: the supervisor does,
    when it replaces it.  Without that the address stayed at its limit for ever."""
    limit = 2
    server = mailslot_factory(limits={"max_connections_per_ip": limit}, extra_sections=WORKERS)
    assert server.process is not None
    workers = _serving(server)
    kept = _fill(server, limit)
    more, refused = _open(server, 1)
    assert (len(more), refused) == (0, 1)
    owners = serving_pids(workers, server.starttls[1], [w.sock.getsockname()[1] for w in kept])
    victims = set(owners.values())
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    server.wait_for_log("starting another", len(victims))
    _close(kept)
    poll(lambda: len(children(server.process.pid)) == 2, "the replacements")  # type: ignore[union-attr]
    # The slots come back (a count per worker alone would pass this: both are new).
    _close(_fill(server, limit))


def test_per_user_sessions_are_counted_across_workers(mailslot_factory: ServerFactory) -> None:
    """(c) With alice logged in on one worker, her logins on either worker are refused by
    the session count ("too many sessions"), never reaching the maildrop lock ("maildrop in
    use"), as they did on a worker that had not counted her."""
    server = mailslot_factory(allow_plaintext=True, extra_sections=WORKERS)
    workers = ready_workers(server, 2)
    host, port = server.starttls
    password = server.password("alice")
    first = Pop3Wire(host, port)
    others: list[Pop3Wire] = []
    try:
        assert first.command("USER alice").startswith(b"+OK")
        assert first.command(f"PASS {password}").startswith(b"+OK")
        for _ in range(8):
            wire = Pop3Wire(host, port)
            others.append(wire)
            assert wire.command("USER alice").startswith(b"+OK")
            assert wire.command(f"PASS {password}").startswith(b"-ERR [IN-USE]")
        ports = [w.sock.getsockname()[1] for w in [first, *others]]
        spread = set(serving_pids(workers, port, ports).values())
    finally:
        _close([first, *others])
    # Log lines are written in batches: wait for all eight.
    server.wait_for_log("login refused, too many sessions: user=alice", 8)
    log = server.log()
    assert log.count("login refused, too many sessions: user=alice") == 8, (spread, log)
    assert "maildrop in use" not in log


GAP = 0.5  # failure_delay = failure_delay_max: every check after the first waits this long
DURATION = 4.0


def _guess(host: str, port: int, until: float, attempts: list[int]) -> None:
    """One guesser: USER/PASS with wrong passwords until ``until``, reconnecting as needed."""
    while time.monotonic() < until:
        try:
            with Pop3Wire(host, port) as wire:
                while time.monotonic() < until:
                    assert wire.command("USER alice").startswith(b"+OK")
                    assert wire.command("PASS wrong-password").startswith(b"-ERR [AUTH]")
                    attempts.append(1)
        except (ConnectionClosed, OSError):
            continue


@pytest.mark.parametrize("connections", [1, 50])
def test_fifty_guessers_get_no_more_checks_than_one(
    mailslot_factory: ServerFactory, connections: int
) -> None:
    """(a) 50 parallel connections from one address over 2 workers: the password checks
    (one "login failed" line each) are no more than one connection gets under the policy."""
    server = mailslot_factory(
        allow_plaintext=True,
        failure_delay=GAP,
        failure_delay_max=GAP,
        limits={"max_bad_commands_before_login": 1000, "max_connections_per_ip": 60},
        extra_sections=WORKERS,
    )
    ready_workers(server, 2)
    host, port = server.starttls
    attempts: list[int] = []
    started = time.monotonic()
    until = started + DURATION
    threads = [
        threading.Thread(target=_guess, args=(host, port, until, attempts))
        for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    checks = server.log().count("login failed: user=alice")
    print(f"connections={connections} attempts={len(attempts)} checks={checks} in {elapsed:.1f}s")
    # One connection's policy: one check at once, then one per GAP.
    assert 1 <= checks <= 1 + math.ceil(elapsed / GAP) + 1, server.log()
