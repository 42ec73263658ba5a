"""The migration's progress on stderr: messages, octets, rate and time left.

On a terminal one line is redrawn in place (at most ten times a second); otherwise, as in a
log, a full line every ``interval`` seconds and one at the end.  The clock is a parameter, so
tests need no sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


def _octets(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts what has been copied of ``total_messages`` / ``total_octets``."""

    def __init__(
        self,
        total_messages: int,
        total_octets: int,
        stream: TextIO,
        *,
        tty: bool | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_messages = total_messages
        self.total_octets = total_octets
        self.messages = 0
        self.octets = 0
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._interval = 0.1 if self._tty else interval
        self._clock = clock
        self._started = clock()
        self._shown = self._started

    def advance(self, messages: int, octets: int) -> None:
        """``messages`` more, of ``octets``, are done (copied or found already there)."""
        self.messages += messages
        self.octets += octets
        now = self._clock()
        if now - self._shown >= self._interval:
            self._shown = now
            self._show(now)

    def line(self, now: float | None = None) -> str:
        """The progress as one line of text."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.messages / elapsed
        text = (
            f"{self.messages:,}/{self.total_messages:,} messages, "
            f"{_octets(self.octets)}/{_octets(self.total_octets)}, "
            f"{rate:,.0f} msg/s, {_octets(self.octets / elapsed)}/s"
        )
        if self.octets and self.total_octets > self.octets:
            left = (self.total_octets - self.octets) / (self.octets / elapsed)
            text += f", {_duration(left)} left"
        elif self.messages and self.total_messages > self.messages:
            text += f", {_duration((self.total_messages - self.messages) / rate)} left"
        return text

    def _show(self, now: float) -> None:
        if self._tty:
            self._stream.write(f"\r\x1b[Kmigrate: {self.line(now)}")
        else:
            self._stream.write(f"migrate: {self.line(now)}\n")
        self._stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (a user skipped, a difference), not overwritten."""
        if self._tty:
            self._stream.write("\r\x1b[K")
        self._stream.write(f"migrate: {text}\n")
        self._stream.flush()

    def finish(self) -> None:
        """The final line, always written."""
        now = self._clock()
        elapsed = now - self._started
        if self._tty:
            self._stream.write("\r\x1b[K")
        self._stream.write(f"migrate: {self.line(now)}, {_duration(elapsed)} elapsed\n")
        self._stream.flush()
