"""``mailslot_logins_total{result=...}`` scraped over HTTP from a real server of 2 workers.

A right password refused ``-ERR [IN-USE]`` (RFC 2449 section 8.1.2) because another session
holds the maildrop is ``in-use``, not ``failed``: an alert on failed logins must not fire for
a client that polls while its other session is open, whether the per-user session limit, the
maildrop's lock or PostgreSQL's lease refused it.  A wrong password is ``failed``, and an
attempt the failure penalty refuses without a password check is ``throttled``, with the
node's shared penalty table (Maildir) and the cluster's penalty rows (PostgreSQL).

The failure delay is 30 s, and no test waits for a delayed reply: an outcome is counted as
soon as it is known, before the penalty's hold.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from tests.metrics.test_exporter import Samples, samples, scrape, value
from tests.server.procutil import ready_workers
from tests.support.server import MailslotServer, ServerFactory, free_port
from tests.support.wire import Pop3Wire

DEADLINE = 15.0  # seconds; polling for a state, not a threshold
DELAY = 30.0  # failure_delay = failure_delay_max: a held reply is never waited for


def plain(user: str, password: str) -> str:
    """RFC 4616's initial response: no authzid, the user, the password."""
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def wire(server: MailslotServer) -> Pop3Wire:
    return Pop3Wire(*server.starttls)


def wait_for(server: MailslotServer, port: int, expected: dict[tuple[str, str], float]) -> Samples:
    """Scrape until ``mailslot_logins_total`` has ``expected`` ((result, mechanism): count) on
    the STLS listener (workers write their counts out every second)."""
    listener = f"127.0.0.1:{server.starttls[1]}"
    deadline = time.monotonic() + DEADLINE
    while True:
        found = samples(scrape(port))
        counts = {
            key: value(
                found, "mailslot_logins_total", listener=listener, result=key[0], mechanism=key[1]
            )
            for key in expected
        }
        if counts == expected:
            return found
        assert time.monotonic() < deadline, (counts, server.log())
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("backend", "per_user", "refusal"),
    [
        # [limits] max_sessions_per_user = 1 (the default) refuses before the maildrop...
        ("maildir", 1, "login refused, too many sessions: user=alice"),
        # ...and above it the maildrop's lock does, or PostgreSQL's lease.
        ("maildir", 2, "login refused, maildrop in use: user=alice"),
        ("postgresql", 2, "login refused, maildrop in use: user=alice"),
    ],
)
def test_in_use_wrong_password_and_penalty_refusal_are_told_apart(
    mailslot_factory: ServerFactory,
    request: pytest.FixtureRequest,
    backend: str,
    per_user: int,
    refusal: str,
) -> None:
    port = free_port()
    store: dict[str, Any] = {}
    if backend == "postgresql":
        dsn = request.getfixturevalue("postgres").upgraded("metrics")
        store = {"backend": "postgresql", "dsn": dsn, "lease_seconds": 60.0, "pool_size": 4}
    server = mailslot_factory(
        allow_plaintext=True,
        failure_delay=DELAY,
        failure_delay_max=DELAY,
        store=store,
        limits={"max_sessions_per_user": per_user},
        extra_sections={
            "server": {"workers": 2},
            "metrics": {"address": "127.0.0.1", "port": port},
        },
    )
    ready_workers(server, 2)
    password = server.password("alice")

    # (b) alice's maildrop is held; a second session with the right password, over
    # USER/PASS and over SASL PLAIN, is refused [IN-USE].
    wires = [holder := wire(server)]
    try:
        holder.login("alice", password)
        with wire(server) as second:
            assert second.command("USER alice").startswith(b"+OK")
            assert second.command(f"PASS {password}").startswith(b"-ERR [IN-USE]")
            reply = second.command(f"AUTH PLAIN {plain('alice', password)}")
            assert reply.startswith(b"-ERR [IN-USE]"), reply
        server.wait_for_log(refusal, 2)  # the log line may come after the reply
        wait_for(
            server,
            port,
            {("ok", "USER"): 1, ("in-use", "USER"): 1, ("in-use", "PLAIN"): 1},
        )

        # (a) A wrong password: its -ERR is held DELAY seconds, and it is counted already.
        guesser = wire(server)
        wires.append(guesser)
        assert guesser.command("USER alice").startswith(b"+OK")
        guesser.send(b"PASS wrong-password\r\n")
        server.wait_for_log("login failed: user=alice")
        # (c) Two more attempts from the address with a failure on record: one waits for the
        # slot DELAY seconds away (not yet counted: no outcome), the other would wait longer
        # than failure_delay_max and is refused without a password check.
        for _ in range(2):
            more = wire(server)
            wires.append(more)
            assert more.command("USER alice").startswith(b"+OK")
            more.send(b"PASS wrong-password\r\n")
        server.wait_for_log("login refused, too many failures from 127.0.0.1")
        found = wait_for(
            server,
            port,
            {
                ("ok", "USER"): 1,
                ("in-use", "USER"): 1,
                ("in-use", "PLAIN"): 1,
                ("failed", "USER"): 1,
                ("throttled", "USER"): 1,
                ("failed", "PLAIN"): 0,
                ("error", "USER"): 0,
            },
        )
    finally:
        for each in wires:
            each.close()
    assert server.log().count("login failed: user=alice") == 1  # one password checked
    # The penalty's histogram has the checked failure only.
    assert value(found, "mailslot_login_penalty_seconds_count") == 1
