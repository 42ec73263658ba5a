"""The migration's progress line: counts, rate and time left, redrawn on a terminal and
written as whole lines elsewhere.  A fake clock: no sleeps."""

from __future__ import annotations

import io

from mailslot.migration.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_line_gives_counts_rate_and_time_left() -> None:
    clock = Clock()
    progress = Progress(1000, 1000 * 1024, io.StringIO(), tty=False, clock=clock)
    clock.now += 10
    progress.advance(250, 250 * 1024)
    line = progress.line()
    assert line.startswith("250/1,000 messages, 250.0 KiB/1000.0 KiB, 25 msg/s, 25.0 KiB/s")
    assert line.endswith(", 0:00:30 left")  # 750 KiB more at 25 KiB/s


def test_without_a_terminal_a_line_every_interval_and_one_at_the_end() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = Progress(100, 100, stream, tty=False, interval=10, clock=clock)
    for _ in range(30):
        clock.now += 1
        progress.advance(1, 1)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # at 10, 20 and 30 seconds, and the final one
    assert all(line.startswith("migrate: ") for line in lines)
    assert "\r" not in stream.getvalue()
    assert lines[-1].endswith("0:00:30 elapsed")


def test_on_a_terminal_one_line_is_redrawn_and_notes_stay() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = Progress(10, 10, stream, tty=True, clock=clock)
    clock.now += 1
    progress.advance(5, 5)
    progress.note("bob: skipped")
    progress.finish()
    text = stream.getvalue()
    assert text.startswith("\r\x1b[Kmigrate: 5/10 messages")
    assert "\r\x1b[Kmigrate: bob: skipped\n" in text
    assert text.endswith("elapsed\n")
