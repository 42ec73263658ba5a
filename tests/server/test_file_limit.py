"""A server whose open-file limit cannot cover ``max_connections`` refuses the surplus cleanly.

Each session needs a socket, a maildrop lock and a Maildir directory descriptor; past the
process's limit a login would fail with EMFILE deep in the store.  The server caps its
connections to what the limit allows and answers the rest ``-ERR [SYS/TEMP]`` at once
(RFC 3206 section 4).
"""

from __future__ import annotations

import socket
from contextlib import ExitStack

from tests.support.server import Listener, ServerFactory

from mailslot.server.runner import connections_within

FILE_LIMIT = 200


def test_connections_within_keeps_a_reserve_and_three_descriptors_per_session() -> None:
    assert connections_within(20_000) == (20_000 - 64) // 3
    assert connections_within(10) == 1


def test_connections_beyond_the_file_limit_get_sys_temp(mailslot_factory: ServerFactory) -> None:
    server = mailslot_factory(
        listeners=(Listener("none"),),
        allow_plaintext=True,
        limits={"max_connections": 10_000, "max_connections_per_ip": 10_000},
        file_limit=FILE_LIMIT,
    )
    affordable = connections_within(FILE_LIMIT)
    host, port = server.listener("none")
    with ExitStack() as stack:
        greetings = []
        for _ in range(affordable + 5):
            sock = stack.enter_context(socket.create_connection((host, port), timeout=10))
            greetings.append(sock.makefile("rb").readline())
        served = [g for g in greetings if g.startswith(b"+OK")]
        refused = [g for g in greetings if g.startswith(b"-ERR [SYS/TEMP]")]
        assert len(served) == affordable
        assert len(refused) == 5
    assert "serving at most" in server.log()
