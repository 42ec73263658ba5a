"""mailslot.log: the cached-time formatter, the handler that writes a loop turn at once, and
the session logger's prefix."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from mailslot.log import FORMAT, Formatter, LoopHandler, SessionLogger, session_prefix


class Recording(io.StringIO):
    """A stream that keeps each write() separately."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def handler() -> LoopHandler:
    h = LoopHandler(Recording())
    h.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return h


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("mailslot.test", level, __file__, 1, message, None, None)


def writes(handler: LoopHandler) -> list[str]:
    stream = handler.stream
    assert isinstance(stream, Recording)
    return stream.writes


def test_formatter_matches_the_standard_one_across_seconds() -> None:
    ours, standard = Formatter(), logging.Formatter(FORMAT)
    for created in (1_800_000_000.0, 1_800_000_000.999, 1_800_000_001.0005, 1_800_000_000.5):
        r = record("x")
        r.created, r.msecs = created, (created - int(created)) * 1000
        assert ours.format(r) == standard.format(r)


def test_lines_of_one_loop_turn_are_written_together_at_the_next() -> None:
    h = LoopHandler(Recording())
    h.setFormatter(logging.Formatter("%(message)s"))

    async def main() -> list[str]:
        h.attach(asyncio.get_running_loop())
        h.handle(record("one"))
        h.handle(record("two"))
        held = list(writes(h))
        await asyncio.sleep(0)
        h.detach()
        return held

    assert asyncio.run(main()) == []
    assert writes(h) == ["one\ntwo\n"]


def test_a_warning_writes_what_is_held_first_and_at_once(handler: LoopHandler) -> None:
    async def main() -> None:
        handler.attach(asyncio.get_running_loop())
        handler.handle(record("first"))
        handler.handle(record("trouble", logging.WARNING))
        assert "".join(writes(handler)) == "INFO first\nWARNING trouble\n"
        handler.detach()

    asyncio.run(main())


def test_another_threads_line_is_not_held(handler: LoopHandler) -> None:
    async def main() -> None:
        handler.attach(asyncio.get_running_loop())
        thread = threading.Thread(target=handler.handle, args=(record("from a thread"),))
        thread.start()
        thread.join()
        assert writes(handler) == ["INFO from a thread\n"]
        handler.detach()

    asyncio.run(main())


def test_detach_writes_what_is_held_and_holds_no_more(handler: LoopHandler) -> None:
    async def main() -> None:
        handler.attach(asyncio.get_running_loop())
        handler.handle(record("held"))
        handler.detach()
        assert writes(handler) == ["INFO held\n"]
        handler.handle(record("after"))
        assert writes(handler) == ["INFO held\n", "INFO after\n"]

    asyncio.run(main())


def test_without_a_loop_every_line_is_written_at_once(handler: LoopHandler) -> None:
    handler.handle(record("a"))
    handler.handle(record("b"))
    assert writes(handler) == ["INFO a\n", "INFO b\n"]


def test_a_write_holds_whole_lines_and_at_most_a_pipe_buffer(handler: LoopHandler) -> None:
    lines = [f"{i:03d} " + "x" * 95 for i in range(100)]  # 100 bytes each with the newline

    async def main() -> None:
        handler.attach(asyncio.get_running_loop())
        for line in lines:
            handler.handle(record(line))
        handler.detach()

    handler.setFormatter(logging.Formatter("%(message)s"))
    asyncio.run(main())
    done = writes(handler)
    assert "".join(done) == "".join(line + "\n" for line in lines)
    assert len(done) == 3
    assert all(len(w.encode()) <= 4096 and w.endswith("\n") for w in done)


def test_a_failing_stream_loses_the_lines_not_the_server(handler: LoopHandler) -> None:
    class Full(Recording):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    handler.setStream(Full())
    raised: list[dict[str, object]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: raised.append(context))
        handler.attach(loop)
        handler.handle(record("lost"))
        await asyncio.sleep(0)  # the flush callback ran
        handler.handle(record("lost", logging.ERROR))
        handler.detach()

    asyncio.run(main())
    assert raised == []


def test_session_lines_carry_the_prefix_and_a_zone_is_not_a_conversion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An IPv6 link-local peer's zone ("%eth0") is text, with or without arguments."""
    log = SessionLogger(
        logging.getLogger("mailslot.test"), session_prefix("5a", "[fe80::1%eth0]:41000")
    )
    with caplog.at_level(logging.INFO, logger="mailslot.test"):
        log.info("login: user=%s messages=%d", "alice", 3)
        log.warning("no arguments, 100%")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("internal error")
    prefix = "session=5a peer=[fe80::1%eth0]:41000 "
    assert [r.getMessage() for r in caplog.records] == [
        prefix + "login: user=alice messages=3",
        prefix + "no arguments, 100%",
        prefix + "internal error",
    ]
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING, logging.ERROR]
    assert caplog.records[2].exc_info is not None
    # The record names the caller, as a LoggerAdapter's did, not mailslot/log.py.
    assert {r.filename for r in caplog.records} == {"test_log.py"}


def ours() -> LoopHandler:
    h = LoopHandler(Recording())
    h.setFormatter(Formatter())
    return h


@contextlib.contextmanager
def only(handler: LoopHandler) -> Iterator[None]:
    """The root logger as :func:`mailslot.log.setup` leaves it: ``handler`` alone, at INFO.

    Entered in the test body: pytest adds its capturing handlers to the root logger when the
    body starts and removes them when it ends, so they are set aside in between.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logging.root, "handlers", [handler])
        patch.setattr(logging.root, "level", logging.INFO)
        logging.root.manager._clear_cache()  # type: ignore[attr-defined]
        try:
            yield
        finally:
            logging.root.manager._clear_cache()  # type: ignore[attr-defined]


def test_a_session_line_without_a_record_is_the_line_a_record_makes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With only our handler in the way, a session's line skips the LogRecord and is
    written as the standard formatter would write its record."""
    logger = logging.getLogger("mailslot.test.direct")
    made: list[object] = []
    monkeypatch.setattr(logger, "makeRecord", lambda *a, **k: made.append(a))
    log = SessionLogger(logger, session_prefix("5a", "[fe80::1%eth0]:41000"))
    standard = logging.Formatter(FORMAT)
    expected = []
    h = ours()
    with only(h):
        for created in (1_800_000_000.0, 1_800_000_000.999, 1_800_000_001.0005):
            monkeypatch.setattr("mailslot.log.time.time", lambda created=created: created)
            log.info("login: user=%s messages=%d", "alice", 3)
            log.warning("no arguments, 100%")
            for level, message in [
                (logging.INFO, "login: user=alice messages=3"),
                (logging.WARNING, "no arguments, 100%"),
            ]:
                text = "session=5a peer=[fe80::1%eth0]:41000 " + message
                r = logging.LogRecord(logger.name, level, "", 0, text, (), None)
                r.created, r.msecs = created, int((created - int(created)) * 1000)
                expected.append(standard.format(r) + "\n")
    assert made == []
    assert writes(h) == expected  # no loop attached: each at once


def test_the_direct_path_steps_aside_for_anything_else_that_would_see_the_record() -> None:
    parent = logging.getLogger("mailslot.test.aside")
    logger = logging.getLogger("mailslot.test.aside.session")
    log = SessionLogger(logger, session_prefix("1", "p"))
    seen: list[str] = []

    class Seeing(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    class Noting(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record.getMessage())
            return True

    h = ours()
    cases: list[tuple[str, Any, str, Any]] = [
        ("a handler on a parent", parent, "handlers", [Seeing()]),
        ("a filter on the logger", logger, "filters", [Noting()]),
        ("a filter on the handler", h, "filters", [Noting()]),
        ("a second root handler", logging.root, "handlers", [h, Seeing()]),
    ]
    with only(h):
        for what, target, attribute, value in cases:
            seen.clear()
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(target, attribute, value)
                log.info("n=%d", 1)
            assert seen == ["session=1 peer=p n=1"], what
        assert len(writes(h)) == len(cases)
        assert all(line.endswith(" session=1 peer=p n=1\n") for line in writes(h))
        # What logging drops, the direct path drops too.
        for target, attribute, value in [(parent, "propagate", False), (logger, "disabled", True)]:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(target, attribute, value)
                log.info("gone")
        assert len(writes(h)) == len(cases)


def test_a_bad_format_is_reported_by_logging_not_raised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = SessionLogger(logging.getLogger("mailslot.test.bad"), session_prefix("1", "p"))
    with only(ours()):
        log.info("n=%d", "not a number")  # must not raise into the session
    assert "Logging error" in capsys.readouterr().err
