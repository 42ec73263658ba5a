"""A test hook: SIGKILL this process at a named point, for the crash tests only.

The multi-node tests (tests/integration/test_cluster.py) must kill a node *inside* QUIT's
transaction, after its DELETE and before its commit, to show that the deletion is all or
nothing (RFC 1939 section 6 leaves the UPDATE state's atomicity to the server).  QUIT's
deletion is one statement, its own transaction (``queries.QUIT_DELETE``), so that point is
while the statement runs in the database: :func:`during` sends it and, if armed, kills the
process once it has run for :data:`IN_FLIGHT` seconds without an answer.  The test makes it
wait there (it holds a lock the statement's last step needs), so the kill lands after the
statement's deletions and before its commit; what the database then does with the
statement of a dead client (finish and commit it, or abort it) must be all or none.

It never fires in production: the variable is read once, at import, and a server whose
environment lacks it (every real deployment: nothing documents it as a setting) pays one
comparison with ``None`` per QUIT that deletes.  docs/postgresql.md names it as a test hook.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

ENVIRONMENT = "MAILSLOT_TEST_FAULT"
_ARMED = os.environ.get(ENVIRONMENT) or None
IN_FLIGHT = 1.0  # seconds a statement runs before during() kills the process


def point(name: str) -> None:
    """SIGKILL this process if ``MAILSLOT_TEST_FAULT`` names ``name``; else nothing."""
    if _ARMED is not None and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)


async def during(name: str, statement: Awaitable[T]) -> T:
    """Await ``statement``; if ``MAILSLOT_TEST_FAULT`` names ``name``, SIGKILL this process
    while it runs (after :data:`IN_FLIGHT` seconds, or once it is answered if sooner)."""
    if _ARMED is None or name != _ARMED:
        return await statement
    running = asyncio.ensure_future(statement)
    await asyncio.wait({running}, timeout=IN_FLIGHT)
    os.kill(os.getpid(), signal.SIGKILL)
    return await running  # never reached
