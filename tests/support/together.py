"""Logins that arrive at the same moment, for the penalty's tests of concurrent right
passwords (one address, several workers or nodes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from tests.support.passwd import PasswdUser
from tests.support.wire import Pop3Wire


def log_in_together(
    wires: Sequence[Pop3Wire], users: Sequence[PasswdUser]
) -> tuple[list[bytes], float]:
    """USER/PASS on each greeted wire for its user, all released by one barrier; returns the
    PASS replies and the seconds until the last came.  The wires are closed on the way out."""
    replies: list[bytes] = []
    start = threading.Barrier(len(wires))

    def login(wire: Pop3Wire, user: PasswdUser) -> None:
        start.wait()
        wire.send(f"USER {user.name}\r\nPASS {user.password}\r\n".encode())
        assert wire.line().startswith(b"+OK")
        replies.append(wire.line())

    try:
        threads = [
            threading.Thread(target=login, args=pair) for pair in zip(wires, users, strict=True)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return replies, time.monotonic() - started
    finally:
        for wire in wires:
            wire.close()
