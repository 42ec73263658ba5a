"""session._Started: a coroutine the session started by hand, finished by a task as if the task
had run it from the start (results, exceptions and cancellation pass through)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from mailslot.server.session import _Started

_FINISHED = "finished"


def start(coro: Coroutine[Any, Any, None], then: Callable[[], None] | None = None) -> _Started:
    """Step ``coro`` by hand to its first wait, as Session._advance does."""
    waiting = coro.send(None)
    return _Started(coro, waiting, then)


def test_the_rest_runs_in_the_task_with_the_futures_results() -> None:
    seen: list[object] = []

    async def work(first: asyncio.Future[int], second: asyncio.Future[str]) -> None:
        seen.append(await first)
        seen.append(await second)
        await asyncio.sleep(0)  # a bare yield, as sleep(0) gives
        seen.append(_FINISHED)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        task = loop.create_task(start(work(first, second)))
        loop.call_later(0.01, first.set_result, 1)
        loop.call_later(0.02, second.set_result, "two")
        await task

    asyncio.run(main())
    assert seen == [1, "two", _FINISHED]


def test_an_exception_set_on_the_future_is_raised_inside_the_coroutine() -> None:
    seen: list[str] = []

    async def work(future: asyncio.Future[None]) -> None:
        try:
            await future
        except ConnectionResetError:
            seen.append("caught")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        task = loop.create_task(start(work(future)))
        loop.call_soon(future.set_exception, ConnectionResetError())
        await task

    asyncio.run(main())
    assert seen == ["caught"]


@pytest.mark.parametrize("when", ["before its first step", "while it waits"])
def test_cancelling_the_task_cancels_the_coroutine(when: str) -> None:
    seen: list[str] = []

    async def work(future: asyncio.Future[None]) -> None:
        try:
            await future
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("cleaned up")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        task = loop.create_task(start(work(future)))
        if when == "while it waits":
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["cancelled", "cleaned up"]


def test_then_runs_once_the_coroutine_returns() -> None:
    seen: list[str] = []

    async def work(future: asyncio.Future[None]) -> None:
        await future
        seen.append("work")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        task = loop.create_task(start(work(future), lambda: seen.append("then")))
        await asyncio.sleep(0.01)
        assert seen == []
        future.set_result(None)
        await task

    asyncio.run(main())
    assert seen == ["work", "then"]


def test_closing_it_closes_the_coroutine() -> None:
    seen: list[str] = []

    async def work(future: asyncio.Future[None]) -> None:
        try:
            await future
        finally:
            seen.append("closed")

    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        started = start(work(future))
        assert started.send(None) is future  # a task's first step gets what it waits on
        started.close()
    finally:
        loop.close()
    assert seen == ["closed"]


def test_awaiting_it_directly_finishes_the_coroutine() -> None:
    seen: list[object] = []

    async def work(future: asyncio.Future[int]) -> None:
        seen.append(await future)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_later(0.01, future.set_result, 7)
        await start(work(future))

    asyncio.run(main())
    assert seen == [7]
