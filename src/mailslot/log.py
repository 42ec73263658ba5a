"""Logging: one line per event, with the session id and the peer; control bytes escaped.

Every value that came from the network goes through :func:`escape` before it is formatted,
so a client cannot forge log lines with CR/LF or terminal escapes.  Passwords and SASL
payloads are never passed to a logger.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import TextIO

_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]} | {0x5C: "\\\\"}


def escape(value: object, limit: int = 200) -> str:
    """Render ``value`` on one line: control characters as ``\\xNN``, cut at ``limit``."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    out = text.translate(_ESCAPES)
    # C1 controls and other non-printables (e.g. U+2028) would break "one event, one line".
    if not out.isprintable():
        out = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in out)
    return out


def session_prefix(session: str, peer: str) -> str:
    """What each line of one session begins with: ``session=<id> peer=<address> ``."""
    return f"session={session} peer={peer} "


class SessionLogger:
    """Begins each message with a session's prefix (:func:`session_prefix`).

    Two slots, where a ``LoggerAdapter`` took an instance dict and an ``extra`` dict, and a
    call goes straight to the logger instead of through the adapter's ``log`` and
    ``process``.  Cheap enough to make for each line: a session keeps only its prefix.
    """

    __slots__ = ("_logger", "_prefix")

    def __init__(self, logger: logging.Logger, prefix: str) -> None:
        self._logger = logger
        self._prefix = prefix

    def info(self, msg: str, *args: object) -> None:
        self._log(logging.INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._log(logging.WARNING, msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._log(logging.ERROR, msg, args)

    def exception(self, msg: str, *args: object) -> None:
        self._log(logging.ERROR, msg, args, exc_info=True)

    def _log(self, level: int, msg: str, args: tuple[object, ...], exc_info: bool = False) -> None:
        logger = self._logger
        if not logger.isEnabledFor(level):
            return
        handler = None if exc_info else _direct_handler(logger, level)
        if handler is not None:
            try:
                text = msg % args if args else msg
            except (TypeError, ValueError):
                pass  # a bad format: logging's own path below reports it (handleError)
            else:
                handler.write_line(level, logger.name, self._prefix + text)
                return
        # The prefix is an argument, never part of the format: an IPv6 peer's zone ("%eth0")
        # is not a conversion.  A message without arguments is not a format either, as
        # logging has it.  stacklevel=3: the record's caller is the session's code.
        if args:
            fmt, values = "%s" + msg, (self._prefix, *args)
        else:
            fmt, values = "%s%s", (self._prefix, msg)
        logger.log(level, fmt, *values, exc_info=exc_info, stacklevel=3)


def _direct_handler(logger: logging.Logger, level: int) -> LoopHandler | None:
    """The :class:`LoopHandler` that a record of ``logger`` at ``level`` would reach, and
    nothing else would, when it may be given the line without a record; else ``None``.

    That is the configuration :func:`setup` makes: the root logger's only handler, with our
    :class:`Formatter`, and no filter, handler or stop in the way.  Anything else (a test's
    capturing handler, a filter) gets a real record through :mod:`logging`.
    """
    node: logging.Logger | None = logger
    root = logging.root
    while node is not None and node is not root:
        if node.handlers or node.filters or node.disabled or not node.propagate:
            return None
        node = node.parent
    handlers = root.handlers
    if len(handlers) != 1 or root.filters:
        return None
    handler = handlers[0]
    if (
        type(handler) is not LoopHandler
        or handler.filters
        or level < handler.level
        or type(handler.formatter) is not Formatter
    ):
        return None
    return handler


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# One write() at most this long: a pipe takes up to PIPE_BUF (4096 on Linux) bytes from one
# writer in one piece, so the lines of several worker processes never interleave mid-line.
_WRITE_AT_MOST = 4096


class Formatter(logging.Formatter):
    """:data:`FORMAT` with the date and time formatted once per second, not once per line.

    The output is the standard formatter's (``2026-11-27 15:48:47,285``); ``strftime`` of
    the local time was a sixth of what a log line cost.
    """

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"  # default_msec_format

    def line(self, created: float, level: int, name: str, message: str) -> str:
        """What :meth:`format` makes of a record with these fields and no exception: the same
        text, without building the record (a fifth of a plain login's CPU went to the two
        records of its log lines)."""
        stamp = self._seconds(created)
        msecs = int((created - int(created)) * 1000)  # as LogRecord computes it
        return f"{stamp},{msecs:03d} {logging.getLevelName(level)} {name}: {message}"

    def _seconds(self, created: float) -> str:
        """The date and time of ``created`` to the second, formatted once per second."""
        second = int(created)
        if second != self._second:  # called under the handler's lock
            self._stamp = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        return self._stamp


class LoopHandler(logging.StreamHandler[TextIO]):
    """Writes what one turn of the event loop logs in one ``write``, at the loop's next turn.

    A session logs two lines, and one turn of a busy loop serves many sessions: a write
    system call per line was some 4 % of a plain login's CPU.  Lines are held only when they
    are logged on the attached loop's thread, below WARNING, and only until the flush that
    the first of them schedules runs (``call_soon``: after the current batch of I/O
    callbacks).
    Anything else (warnings, errors, other threads' lines, lines while no loop is attached)
    is written at once, after what is held, so the order of lines is kept.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._held: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hold the lines logged on ``loop``'s thread (call it from that thread)."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._write_held()
            self._loop = loop
            self._thread = threading.get_ident()

    def detach(self) -> None:
        """Write what is held and hold nothing more (before the loop closes)."""
        with self.lock:  # type: ignore[union-attr]
            self._write_held()
            self._loop = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._add(line, record.levelno)

    def write_line(self, level: int, name: str, message: str) -> None:
        """Log ``message`` of logger ``name`` as :meth:`emit` would log its record (see
        :func:`_direct_handler` for when that is the same)."""
        formatter = self.formatter
        assert isinstance(formatter, Formatter)
        with self.lock:  # type: ignore[union-attr]
            self._add(formatter.line(time.time(), level, name, message) + self.terminator, level)

    def _add(self, line: str, level: int) -> None:
        """Hold ``line`` or write it (under the lock)."""
        loop = self._loop
        if loop is not None and level < logging.WARNING and threading.get_ident() == self._thread:
            if not self._held:
                try:
                    loop.call_soon(self.flush)
                except RuntimeError:  # the loop is closed: write at once
                    self._loop = None
                    self._held.append(line)
                    self._write_held()
                    return
            self._held.append(line)
            return
        self._held.append(line)
        self._write_held()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_held()

    def _write_held(self) -> None:
        held, self._held = self._held, []
        if not held:
            return
        try:
            batch: list[str] = []
            size = 0
            for line in held:
                length = len(line) if line.isascii() else len(line.encode(errors="replace"))
                if batch and size + length > _WRITE_AT_MOST:
                    self._write(batch)
                    batch, size = [], 0
                batch.append(line)
                size += length
            self._write(batch)
        except (OSError, ValueError):
            pass  # a full disk or a closed stderr must not stop the server

    def _write(self, lines: list[str]) -> None:
        self.stream.write("".join(lines))
        self.stream.flush()


def setup(level: str = "info") -> None:
    """Log to stderr, one line per record (see :class:`LoopHandler`)."""
    handler = LoopHandler(sys.stderr)
    handler.setFormatter(Formatter())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def attach_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Let the root logger's :class:`LoopHandler` batch the lines logged on ``loop``."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LoopHandler):
            handler.attach(loop)


def detach_loop() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LoopHandler):
            handler.detach()
