"""The parent of pre-forked workers (:mod:`mailslot.server.supervisor`).

The fork tests run the supervisor in this process with stand-in workers: real forked
children that say they started (or not), crash, send the parent signals and write down what
they were given and told, so that every path of the parent runs without a whole server.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from mailslot.config import Config, ListenerConfig
from mailslot.metrics import ParentMetrics
from mailslot.server import supervisor
from mailslot.server.supervisor import RETIRE, Supervisor

CONFIG = cast(Config, SimpleNamespace(tls=SimpleNamespace(certificate="cert.pem", certificates=())))


class Contexts(SimpleNamespace):
    """A stand-in for TlsContexts: a name, and no warnings from its load; ``loaded`` stands
    for the pairs it loaded."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, warnings=[], loaded=[f"{name} pair"])

    def __eq__(self, other: object) -> bool:
        return other == self.name if isinstance(other, str) else super().__eq__(other)

    def __str__(self) -> str:
        return self.name


Worker = Callable[[int, Any, Callable[[], None]], int]


@pytest.fixture(autouse=True)
def unfreeze() -> Iterator[None]:
    """Undo the freeze that each fork does to this process, the supervisor's parent here."""
    assert gc.get_freeze_count() == 0, "something else froze the collector"
    try:
        yield
    finally:
        gc.unfreeze()


class Recorded(ParentMetrics):
    """The parent's metrics: what its hooks were given."""

    def __init__(self) -> None:
        self.certificates_loaded: list[Any] = []

    def certificates(self, loaded: Any) -> None:
        self.certificates_loaded.append(loaded)


def supervise(
    worker: Worker,
    load: Callable[[], Any] = lambda: Contexts("new"),
    metrics: ParentMetrics | None = None,
) -> int:
    """Run a supervisor of two stand-in workers, given context ``"old"`` and ``load()`` on
    SIGHUP, until it returns; its exit status."""

    def main(
        _config: Config,
        index: int,
        _sockets: Mapping[ListenerConfig, Any],
        contexts: Any,
        started: Callable[[], None],
    ) -> int:
        return worker(index, contexts, started)

    return Supervisor(CONFIG, 2, cast(Any, "old"), {}, main, load, metrics=metrics).run()


def wait_for(*signums: int) -> str:
    """In a stand-in worker: the name of the first of ``signums`` (blocked since the fork);
    ``timeout`` after 20 s, so that no stand-in outlives a failed test for long."""
    info = signal.sigtimedwait(set(signums), 20)
    return "timeout" if info is None else signal.Signals(info.si_signo).name


def note(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(line + "\n")


def test_a_worker_that_crashes_after_starting_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "log"

    def worker(index: int, _contexts: Any, started: Callable[[], None]) -> int:
        started()
        crashed = tmp_path / "crashed"
        if index == 1 and not crashed.exists():
            crashed.touch()
            return 70
        note(log, f"{index} serving")
        if index == 1:  # the replacement: the test has seen what it needs
            os.kill(os.getppid(), signal.SIGTERM)
        note(log, f"{index} {wait_for(signal.SIGTERM)}")
        return 0

    with caplog.at_level(logging.INFO, "mailslot"):
        assert supervise(worker) == 0
    assert sorted(log.read_text().splitlines()) == [
        "0 SIGTERM",
        "0 serving",
        "1 SIGTERM",
        "1 serving",
    ]
    assert "worker 1 pid=" in caplog.text
    assert "exited with status 70; starting another" in caplog.text


def test_a_worker_that_fails_before_serving_stops_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "log"

    def worker(index: int, _contexts: Any, started: Callable[[], None]) -> int:
        if index == 1:
            return 75  # as a worker that cannot start
        started()
        note(log, f"{index} {wait_for(signal.SIGTERM)}")
        return 0

    with caplog.at_level(logging.INFO, "mailslot"):
        assert supervise(worker) == 75
    assert log.read_text() == "0 SIGTERM\n"
    assert "worker 1 pid=" in caplog.text
    assert "exited with status 75 before serving; stopping" in caplog.text


def test_sighup_starts_a_generation_with_the_new_context_and_retires_the_old(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "log"

    def worker(index: int, contexts: Any, started: Callable[[], None]) -> int:
        started()
        if contexts == "old" and index == 0:
            os.kill(os.getppid(), signal.SIGHUP)
        if contexts == "new" and index == 1:
            os.kill(os.getppid(), signal.SIGTERM)
        note(log, f"{contexts} {index} {wait_for(signal.SIGTERM, RETIRE)}")
        return 0

    metrics = Recorded()
    with caplog.at_level(logging.INFO, "mailslot"):
        assert supervise(worker, metrics=metrics) == 0
    assert sorted(log.read_text().splitlines()) == [
        "new 0 SIGTERM",
        "new 1 SIGTERM",
        "old 0 SIGUSR2",
        "old 1 SIGUSR2",
    ]
    assert "TLS certificate reloaded from cert.pem: 2 new workers" in caplog.text
    assert metrics.certificates_loaded == [["new pair"]]  # what the new generation serves


def test_a_failed_reload_keeps_the_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "log"

    def unusable() -> None:
        raise OSError("no such file")

    def worker(index: int, contexts: Any, started: Callable[[], None]) -> int:
        started()
        if index == 0:
            os.kill(os.getppid(), signal.SIGHUP)
            os.kill(os.getppid(), signal.SIGTERM)
        note(log, f"{contexts} {index} {wait_for(signal.SIGTERM, RETIRE)}")
        return 0

    metrics = Recorded()
    with caplog.at_level(logging.INFO, "mailslot"):
        assert supervise(worker, unusable, metrics) == 0
    assert metrics.certificates_loaded == []
    assert sorted(log.read_text().splitlines()) == ["old 0 SIGTERM", "old 1 SIGTERM"]
    assert "TLS reload failed, keeping the old certificate: no such file" in caplog.text


def test_a_reload_that_cannot_fork_keeps_the_old_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new generation's second fork fails: its first worker retires, the old ones stay."""
    log = tmp_path / "log"
    forks = 0
    real_fork = os.fork

    def fork() -> int:
        nonlocal forks
        forks += 1
        if forks == 4:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()

    def worker(index: int, contexts: Any, started: Callable[[], None]) -> int:
        started()
        if contexts == "old" and index == 0:
            os.kill(os.getppid(), signal.SIGHUP)  # taken first: the lower number
            os.kill(os.getppid(), signal.SIGTERM)
        note(log, f"{contexts} {index} {wait_for(signal.SIGTERM, RETIRE)}")
        return 0

    monkeypatch.setattr(supervisor.os, "fork", fork)
    metrics = Recorded()
    with caplog.at_level(logging.INFO, "mailslot"):
        assert supervise(worker, metrics=metrics) == 0
    assert sorted(log.read_text().splitlines()) == [
        "new 0 SIGUSR2",
        "old 0 SIGTERM",
        "old 1 SIGTERM",
    ]
    assert "TLS reload failed, keeping the old workers: cannot fork" in caplog.text
    assert "TLS certificate reloaded" not in caplog.text
    assert metrics.certificates_loaded == []  # the old certificates are still the ones served


def test_each_worker_is_forked_with_the_parents_objects_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pages built before the fork stay shared with a worker only while nobody writes to
    them, and the cyclic collector writes to every object it tracks.  Frozen objects are
    never looked at (``gc.freeze()``), so a worker's collections leave the parent's pages
    shared.  The fork is replaced here: what counts is the collector's state at each fork.
    """
    frozen_at_fork: list[int] = []
    tracked_at_fork: list[int] = []

    def fork() -> int:
        frozen_at_fork.append(gc.get_freeze_count())
        tracked_at_fork.append(len(gc.get_objects()))
        return 1_000_000 + len(frozen_at_fork)  # the parent's side of the fork

    monkeypatch.setattr(supervisor.os, "fork", fork)
    module_object: Any = Supervisor  # certainly alive before the fork
    assert gc.is_tracked(module_object)
    parent = Supervisor(CONFIG, 2, None, {}, cast(Any, None), lambda: None)
    try:
        parent.spawn(0)
        parent.spawn(1)
    finally:
        for child in parent.workers.values():
            os.close(child.started)

    assert len(frozen_at_fork) == 2
    # Everything the collector tracked is frozen: what it still sees is what the test made.
    assert all(count > 1000 for count in frozen_at_fork)
    assert all(tracked < 1000 for tracked in tracked_at_fork)
    assert module_object not in gc.get_objects()
