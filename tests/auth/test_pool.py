"""The slow-hash pool (auth/pool.py) and the failure deadline (auth/verification.py).

A fake executor runs nothing until the test says so, and a fake clock and sleep stand in for
time: the tests see which check runs next and how long a failure is held, never a timing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailslot.auth.base import AuthenticationFailed
from mailslot.auth.memory import MemoryAuthenticator
from mailslot.auth.passwdfile import PasswdFileAuthenticator
from mailslot.auth.pool import VerifyPool, VerifyRefused
from mailslot.auth.verification import (
    answer_failure,
    choose_dummy,
    failure_floor,
    measure_costs,
)


class HeldExecutor(concurrent.futures.Executor):
    """Queues submitted checks; ``finish()`` runs the oldest and completes its future."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.pending.append((lambda: fn(*args, **kwargs), future))
        return future

    def finish(self) -> None:
        fn, future = self.pending.pop(0)
        future.set_result(fn())


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_clients_are_served_round_robin_and_capped() -> None:
    async def scenario() -> list[str]:
        executor = HeldExecutor()
        pool = VerifyPool(1, per_client=2, executor=executor)
        order: list[str] = []

        def check(name: str) -> Callable[[], bool]:
            return lambda: order.append(name) or False

        tasks = [asyncio.create_task(pool.run("mallory", check(f"m{n}"))) for n in range(2)]
        await settle()
        # A third check from mallory while two are held: refused without running.
        with pytest.raises(VerifyRefused):
            await pool.run("mallory", check("m-refused"))
        tasks.append(asyncio.create_task(pool.run("alice", check("a0"))))
        await settle()
        assert pool.running == 1 and pool.waiting() == 2
        while executor.pending:
            executor.finish()
            await settle()
        await asyncio.gather(*tasks)
        return order

    # alice's check comes right after the one running, before mallory's second.
    assert asyncio.run(scenario()) == ["m0", "a0", "m1"]


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> None:
        executor = HeldExecutor()
        pool = VerifyPool(1, per_client=2, executor=executor)
        first = asyncio.create_task(pool.run("a", lambda: True))
        second = asyncio.create_task(pool.run("b", lambda: True))
        await settle()
        second.cancel()
        await settle()
        assert pool.waiting() == 0
        executor.finish()
        assert await first is True
        assert pool.running == 0

    asyncio.run(scenario())


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_answer_failure_waits_out_the_rest_of_the_floor() -> None:
    fake = FakeTime()
    fake.now = 100.3
    asyncio.run(answer_failure(100.0, 1.0, fake.clock, fake.sleep))
    assert fake.slept == [pytest.approx(0.7)]
    fake.slept.clear()
    fake.now = 101.5  # the check itself took longer than the floor: no extra wait
    asyncio.run(answer_failure(100.0, 1.0, fake.clock, fake.sleep))
    assert fake.slept == []


def test_every_failure_ends_at_the_same_deadline_whatever_the_user() -> None:
    """Unknown user, a fast {PLAIN} user and a "slow" one (its check moves the fake clock):
    each failure returns at started + floor."""
    fake = FakeTime()

    def verifier(password: str, stored: str) -> bool:
        fake.now += 0.4 if stored.startswith("{SSHA") else 0.0
        return False

    auth = MemoryAuthenticator(
        {"plain": "x", "slow": "{SSHA}S55XocB2CN/JntcidijpUAg4uh2M0F5D"},
        verifier=verifier,
        failure_floor=2.0,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    ends = []
    for name in ("nobody", "plain", "slow"):
        started = fake.now
        with pytest.raises(AuthenticationFailed):
            asyncio.run(auth.authenticate(name, "wrong", client="192.0.2.1"))
        ends.append(fake.now - started)
    assert ends == [pytest.approx(2.0)] * 3


def test_costs_are_measured_per_scheme_and_set_the_floor() -> None:
    ticks = iter(range(1000))

    def clock() -> float:
        return next(ticks) * 0.04  # every check "takes" 0.04 s

    stored = ["{PLAIN}a", "{PLAIN}b", "{SSHA}S55XocB2CN/JntcidijpUAg4uh2M0F5D"]
    costs = measure_costs(stored, clock=clock)
    assert costs == {"PLAIN": pytest.approx(0.04), "SSHA": pytest.approx(0.04)}
    # A scheme already measured is not measured again (a re-read passwd-file).
    assert measure_costs(stored, known={"PLAIN": 1.0, "SSHA": 2.0}, clock=clock) == {
        "PLAIN": 1.0,
        "SSHA": 2.0,
    }
    assert failure_floor({"PLAIN": 0.0, "SSHA": 0.2}) == pytest.approx(0.2 * 1.25 + 0.005)
    assert failure_floor({"SSHA": 0.2}, configured=3.0) == 3.0
    # The dummy is a hash of the costliest scheme, however few users have it.
    assert choose_dummy(stored, costs={"PLAIN": 0.0, "SSHA": 0.2}) == stored[2]


def test_passwd_file_failures_end_at_the_configured_floor(tmp_path: Path) -> None:
    fake = FakeTime()
    path = tmp_path / "passwd"
    path.write_text("alice:{PLAIN}right\n")
    auth = PasswdFileAuthenticator(path, failure_floor=5.0, clock=fake.clock, sleep=fake.sleep)
    for name in ("alice", "nobody", "../x"):
        started = fake.now
        with pytest.raises(AuthenticationFailed):
            asyncio.run(auth.authenticate(name, "wrong", client="192.0.2.1"))
        assert fake.now - started == pytest.approx(5.0)
    fake.slept.clear()
    assert asyncio.run(auth.authenticate("alice", "right")).name == "alice"
    assert fake.slept == []  # a success is not held
