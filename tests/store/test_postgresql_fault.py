"""The ``MAILSLOT_TEST_FAULT`` hook (mailslot.store.postgresql.fault): it kills the process at
the point it names and nowhere else, and does nothing without the variable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

CALL = "from mailslot.store.postgresql import fault; fault.point({!r}); print('alive')"


def _run(point: str, armed: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "MAILSLOT_TEST_FAULT"}
    if armed is not None:
        env["MAILSLOT_TEST_FAULT"] = armed
    return subprocess.run(
        [sys.executable, "-c", CALL.format(point)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_named_point_kills_the_process() -> None:
    result = _run("quit-before-commit", "quit-before-commit")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == ""


@pytest.mark.parametrize("armed", [None, "", "some-other-point"])
def test_without_the_variable_or_at_another_point_nothing_happens(armed: str | None) -> None:
    result = _run("quit-before-commit", armed)
    assert (result.returncode, result.stdout) == (0, "alive\n"), result.stderr


DURING = (
    "import asyncio\n"
    "from mailslot.store.postgresql import fault\n"
    "async def statement():\n"
    "    await asyncio.sleep(60)\n"
    "    return 'answered'\n"
    "async def fast():\n"
    "    return 'answered'\n"
    "print(asyncio.run(fault.during({!r}, {}())))\n"
)


def _run_during(point: str, armed: str | None, statement: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "MAILSLOT_TEST_FAULT"}
    if armed is not None:
        env["MAILSLOT_TEST_FAULT"] = armed
    return subprocess.run(
        [sys.executable, "-c", DURING.format(point, statement)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_during_kills_the_process_while_the_statement_is_unanswered() -> None:
    """QUIT's one statement: the kill lands while it runs (a statement that would answer
    in 60 s; the process dies after fault.IN_FLIGHT)."""
    result = _run_during("quit-before-commit", "quit-before-commit", "statement")
    assert (result.returncode, result.stdout) == (-signal.SIGKILL, "")


@pytest.mark.parametrize("armed", [None, "some-other-point"])
def test_during_without_the_variable_awaits_the_statement(armed: str | None) -> None:
    result = _run_during("quit-before-commit", armed, "fast")
    assert (result.returncode, result.stdout) == (0, "answered\n"), result.stderr
