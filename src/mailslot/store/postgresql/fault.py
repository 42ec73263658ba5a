"""A test hook: SIGKILL this process at a named point, for the crash tests only.

The multi-node tests (tests/integration/test_cluster.py) must kill a node *inside* QUIT's
transaction, after its DELETE and before its COMMIT, to show that the deletion is all or
nothing (RFC 1939 section 6 leaves the UPDATE state's atomicity to the server).  No signal
sent from outside can land there reliably, so the process kills itself when the environment
variable ``MAILSLOT_TEST_FAULT`` names the point it reached.

It never fires in production: the variable is read once, at import, and a server whose
environment lacks it (every real deployment: nothing documents it as a setting) pays one
comparison with ``None`` per QUIT that deletes.  docs/postgresql.md names it as a test hook.
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT = "MAILSLOT_TEST_FAULT"
_ARMED = os.environ.get(ENVIRONMENT) or None


def point(name: str) -> None:
    """SIGKILL this process if ``MAILSLOT_TEST_FAULT`` names ``name``; else nothing."""
    if _ARMED is not None and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
