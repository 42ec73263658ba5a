"""The failure penalty over real sockets: one count per client, across workers and /64s.

Verified password checks are counted from the log ("login failed" is written once per
check that failed; "login refused" for an attempt refused without one), not timed.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import pytest
from tests.server.procutil import children, ready_workers
from tests.server.test_proxy import proxied_wire, v1
from tests.support.passwd import PasswdUser
from tests.support.server import Listener, ServerFactory
from tests.support.together import log_in_together
from tests.support.wire import ConnectionClosed, Pop3Wire

GAP = 0.5  # failure_delay = failure_delay_max: every check after the first waits this long
DURATION = 3.0


def _guess(host: str, port: int, until: float) -> None:
    """One guesser: USER/PASS with wrong passwords until ``until``, reconnecting as needed."""
    while time.monotonic() < until:
        try:
            with Pop3Wire(host, port) as wire:
                while time.monotonic() < until:
                    assert wire.command("USER alice").startswith(b"+OK")
                    assert wire.command("PASS wrong-password").startswith(b"-ERR [AUTH]")
        except (ConnectionClosed, OSError):
            continue


@pytest.mark.parametrize("connections", [1, 20])
def test_parallel_guessers_across_workers_get_no_more_checks_than_the_penalty(
    mailslot_factory: ServerFactory, connections: int
) -> None:
    server = mailslot_factory(
        allow_plaintext=True,
        failure_delay=GAP,
        failure_delay_max=GAP,
        limits={"max_bad_commands_before_login": 1000},
        extra_sections={"server": {"workers": 2}},
    )
    host, port = server.starttls
    started = time.monotonic()
    until = started + DURATION
    threads = [
        threading.Thread(target=_guess, args=(host, port, until)) for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    checks = server.log().count("login failed: user=alice")
    # One check at once, then one per GAP: with a penalty per worker (or per connection),
    # 20 connections made about 20 checks per GAP.
    assert 1 <= checks <= 1 + math.ceil(elapsed / GAP) + 1, server.log()
    if connections > 1:
        assert "login refused, too many failures from 127.0.0.1" in server.log()


ACCOUNTS = [PasswdUser(f"user{n}", f"secret-{n}", scheme="SHA512-CRYPT") for n in range(6)]


def test_right_passwords_at_once_from_one_address_are_neither_delayed_nor_refused(
    mailslot_factory: ServerFactory,
) -> None:
    """A mail client starting with six accounts on this server: six logins with right
    passwords sent at the same moment from 127.0.0.1 to two workers, their checks (hashed
    passwords, so they overlap) in flight together.  With every check a strike, the second
    waited 30 s and the rest were refused ``-ERR [AUTH]`` without a check; now the checks
    go one at a time and all six log in."""
    server = mailslot_factory(
        users=ACCOUNTS,
        allow_plaintext=True,
        failure_delay=30.0,
        failure_delay_max=30.0,
        extra_sections={"server": {"workers": 2}},
    )
    ready_workers(server, 2)
    host, port = server.starttls
    wires = [Pop3Wire(host, port) for _ in ACCOUNTS]
    replies, elapsed = log_in_together(wires, ACCOUNTS)
    assert [r[:3] for r in replies] == [b"+OK"] * 6, replies
    assert "login refused" not in server.log()
    assert elapsed < 30.0  # no penalty slot was waited for (a bound on the configured gap)


def test_ipv6_addresses_in_one_prefix_share_a_penalty(mailslot_factory: ServerFactory) -> None:
    """Claimed through PROXY headers: after 2001:db8::1 failed, two more addresses of its
    /64 get no check (one waits its 30 s slot, one is refused), while 2001:db8:0:1::1
    (another /64) and an IPv4-mapped address (its IPv4 address) are checked at once."""
    server = mailslot_factory(
        listeners=[Listener("starttls", proxy_protocol=True)],
        allow_plaintext=True,
        failure_delay=30.0,
        failure_delay_max=30.0,
    )
    headers = [
        v1("2001:db8::1", 1000, "::1", 110),
        v1("2001:db8::2:0:0:2", 1001, "::1", 110),
        v1("2001:db8::ffff:ffff:ffff:ffff", 1002, "::1", 110),
        v1("2001:db8:0:1::1", 1003, "::1", 110),
        v1("::ffff:192.0.2.7", 1004, "::1", 110),
    ]
    wires = []
    try:
        for header in headers:
            wire = proxied_wire(server, "starttls", header)
            wires.append(wire)
            assert wire.command("USER alice").startswith(b"+OK")
            wire.send(b"PASS wrong-password\r\n")  # answered only after the penalty
        checked = server.wait_for_log("login failed: user=alice", 3)
        refused = server.wait_for_log("login refused, too many failures from", 1)
    finally:
        for wire in wires:
            wire.close()
    peers = sorted(line.split("peer=")[1].split(" ")[0] for line in checked)
    assert peers == ["[2001:db8:0:1::1]:1003", "[2001:db8::1]:1000", "[::ffff:c000:207]:1004"]
    (line,) = refused
    assert "from 2001:db8::/64:" in line, line
    assert "peer=[2001:db8::2:0:0:2]:1001 " in line or "]:1002 " in line, line


def test_the_penalty_survives_the_replacement_of_every_worker(
    mailslot_factory: ServerFactory,
) -> None:
    """The table lives in the parent: workers killed and replaced still see the failure.

    127.0.0.1 fails once (its next check is 30 s away), both workers are killed and
    replaced, and two more attempts come: one waits for the slot 30 s away, the other is
    refused without a check.  Were the state made in each worker, both would be checked.
    """
    server = mailslot_factory(
        allow_plaintext=True,
        failure_delay=30.0,
        failure_delay_max=30.0,
        extra_sections={"server": {"workers": 2}},
    )
    assert server.process is not None
    parent = server.process.pid
    # Both workers serve: one killed while still starting would stop the server instead.
    ready_workers(server, 2)
    host, port = server.starttls
    with Pop3Wire(host, port) as first:
        assert first.command("USER alice").startswith(b"+OK")
        first.send(b"PASS wrong-password\r\n")  # its -ERR is held 30 s
        server.wait_for_log("login failed: user=alice")
    workers = _poll_children(parent, 2)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    server.wait_for_log("starting another", 2)
    replaced = _poll_children(parent, 2, excluding=set(workers))
    assert not set(replaced) & set(workers)
    wires = []
    try:
        for _ in range(2):
            wire = Pop3Wire(host, port)
            wires.append(wire)
            assert wire.command("USER alice").startswith(b"+OK")
            wire.send(b"PASS wrong-password\r\n")
        server.wait_for_log("login refused, too many failures from 127.0.0.1")
    finally:
        for wire in wires:
            wire.close()
    assert server.log().count("login failed: user=alice") == 1


def _poll_children(parent: int, count: int, excluding: set[int] | None = None) -> list[int]:
    deadline = time.monotonic() + 20
    while True:
        found = [pid for pid in children(parent) if pid not in (excluding or set())]
        if len(found) == count:
            return found
        assert time.monotonic() < deadline, f"workers of {parent}: {children(parent)}"
        time.sleep(0.02)
