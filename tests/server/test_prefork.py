"""The pre-forking parent hands its objects to the workers frozen.

Pages built before the fork stay shared with the workers only while nobody writes to them,
and the cyclic collector writes to every object it tracks.  Frozen objects are never looked
at (``gc.freeze()``), so a worker's collections leave the parent's pages shared.  The fork is
replaced here: what counts is the collector's state at the moment of each fork.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Iterator
from typing import Any, cast

import pytest

from mailslot.config import Config
from mailslot.server import runner


@pytest.fixture
def parent_state() -> Iterator[None]:
    """Undo what _prefork does to this process: its signal handlers and the freeze."""
    assert gc.get_freeze_count() == 0, "something else froze the collector"
    handlers = {signum: signal.getsignal(signum) for signum in runner._SIGNALS}
    try:
        yield
    finally:
        gc.unfreeze()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def test_each_worker_is_forked_with_the_parents_objects_frozen(
    parent_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen_at_fork: list[int] = []
    tracked_at_fork: list[int] = []

    def fork() -> int:
        frozen_at_fork.append(gc.get_freeze_count())
        tracked_at_fork.append(len(gc.get_objects()))
        return 1_000_000 + len(frozen_at_fork)  # the parent's side of the fork

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        return pid, 0

    monkeypatch.setattr(runner.os, "fork", fork)
    monkeypatch.setattr(runner.os, "waitpid", waitpid)
    module_object: Any = runner.Application  # certainly alive before the fork
    assert gc.is_tracked(module_object)

    assert runner._prefork(cast(Config, object()), 2) == 0

    assert len(frozen_at_fork) == 2
    # Everything the collector tracked is frozen: what it still sees is what the call made.
    assert all(count > 1000 for count in frozen_at_fork)
    assert all(tracked < 1000 for tracked in tracked_at_fork)
    assert module_object not in gc.get_objects()
