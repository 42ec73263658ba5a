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

from mailslot import logfields

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


def session_prefix(session: str, peer: str) -> LogContext:
    """The context of one session's lines: ``session=<id> peer=<address> `` begins each."""
    return LogContext(session, peer)


class LogContext:
    """What every line of one session carries: its id and peer (the text format's prefix),
    then fields learnt as it goes (``listener``, ``tls``, ``user``, ``proxy``...).

    Values are set already escaped (or from the configuration); the formatter escapes
    control characters once more in any case.  A slot per field, and no container: tens of
    thousands of idle sessions each hold one of these.
    """

    __slots__ = ("header", "listener", "prefix", "proxy", "tls", "user")
    FIELDS = ("listener", "proxy", "header", "tls", "user")  # in the order lines carry them

    def __init__(self, session: str, peer: str) -> None:
        self.prefix = f"session={session} peer={peer} "
        self.listener: str | None = None
        self.proxy: str | None = None
        self.header: str | None = None
        self.tls: str | None = None
        self.user: str | None = None

    @property
    def session(self) -> str:
        return self.prefix[8 : self.prefix.index(" peer=")]

    @property
    def peer(self) -> str:
        return self.prefix[self.prefix.index(" peer=") + 6 : -1]

    def set(self, key: str, value: str) -> None:
        """Give every further line of the session the field ``key`` (one of FIELDS)."""
        if key not in self.FIELDS:
            raise KeyError(key)
        # Interned: a TLS version and cipher, a listener's name, are shared by many sessions.
        setattr(self, key, sys.intern(logfields.unprintable_escaped(value)))

    @property
    def fields(self) -> dict[str, str]:
        """The fields set so far, in order."""
        return {k: v for k in self.FIELDS if (v := getattr(self, k)) is not None}


# Fields of every line this process writes (``worker``), set once a worker starts.
_PROCESS_FIELDS: dict[str, object] = {}
_process_rendered: tuple[tuple[str, str], ...] = ()


def set_worker(index: int) -> None:
    """Name the worker process in every line it writes from now on (``worker=<index>``)."""
    global _process_rendered
    _PROCESS_FIELDS["worker"] = index
    _process_rendered = logfields.rendered(_PROCESS_FIELDS)


class SessionLogger:
    """Begins each message with a session's prefix and gives it the session's fields.

    Two slots, where a ``LoggerAdapter`` took an instance dict and an ``extra`` dict, and a
    call goes straight to the handler instead of through the adapter's ``log`` and
    ``process``.  Cheap enough to make for each line: a session keeps only its context.
    """

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: LogContext) -> None:
        self._logger = logger
        self._context = context

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
        context = self._context
        handler = None if exc_info else _direct_handler(logger, level)
        if handler is not None:
            try:
                handler.write_event(level, logger.name, msg, args, context)
            except (TypeError, ValueError, KeyError):
                pass  # a bad format: logging's own path below reports it (handleError)
            else:
                return
        # The prefix is an argument, never part of the format: an IPv6 peer's zone ("%eth0")
        # is not a conversion.  A message without arguments is not a format either, as
        # logging has it.  stacklevel=3: the record's caller is the session's code.  Our
        # formatter renders the record from ``log_msg``/``log_args`` and the context.
        if args:
            fmt, values = "%s" + msg, (context.prefix, *args)
        else:
            fmt, values = "%s%s", (context.prefix, msg)
        extra = {"log_context": context, "log_msg": msg, "log_args": args}
        logger.log(level, fmt, *values, exc_info=exc_info, stacklevel=3, extra=extra)


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


FORMATS = ("text", "json")
_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


class Formatter(logging.Formatter):
    """A line per event in ``[log] format`` (``text``: :data:`FORMAT`; ``json``), with the
    event's fields (:mod:`mailslot.logfields`), its session's and its process's.

    The date and time are formatted once per second, not once per line: ``strftime`` of the
    local time was a sixth of what a log line cost.  The text format's time is the standard
    formatter's (``2026-11-27 15:48:47,285``), JSON's is UTC (``2026-11-27T14:48:47.285Z``).
    """

    def __init__(self, fmt: str = FORMAT, style: str = "text") -> None:
        super().__init__(fmt)
        if style not in FORMATS:
            raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {style!r}")
        self.json = style == "json"
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"  # default_msec_format

    def format(self, record: logging.LogRecord) -> str:
        context = getattr(record, "log_context", None)
        msg = getattr(record, "log_msg", None)
        args: object
        if msg is None:
            msg, args = record.msg, record.args
        else:
            args = getattr(record, "log_args", ())
        exception = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            exception = record.exc_text
        if isinstance(msg, str) and isinstance(args, tuple):
            line = self.line(
                record.created, record.levelno, record.name, msg, args, context, exception
            )
        else:  # a mapping's "%(name)s", a message that is no string: no fields
            line = self.line(
                record.created,
                record.levelno,
                record.name,
                record.getMessage(),
                (),
                context,
                exception,
            )
        return line

    def line(
        self,
        created: float,
        level: int,
        name: str,
        msg: str,
        args: tuple[object, ...] = (),
        context: LogContext | None = None,
        exception: str | None = None,
    ) -> str:
        """The line of an event without building a record (a fifth of a plain login's CPU
        went to the two records of its log lines).  TypeError/ValueError when ``args`` do
        not fit ``msg``."""
        template = logfields.parse(msg, bool(args))
        if self.json:
            message, fields = logfields.render(template, args)
            return self._json(
                created, level, name, template.event, message, fields, context, exception
            )
        message = logfields.render_text(template, args)
        stamp = self._seconds(created)
        msecs = int((created - int(created)) * 1000)  # as LogRecord computes it
        head = f"{stamp},{msecs:03d} {logging.getLevelName(level)} {name}: "
        keys = template.keyset
        if context is not None:
            head += context.prefix
            for key in LogContext.FIELDS:
                value = getattr(context, key)
                if value is not None and key not in keys:
                    message += f" {key}={logfields.text_value(value)}"
        for key, text in _process_rendered:
            if key not in keys:
                message += text
        if exception:
            message += "\n" + exception
        return head + message

    def _json(
        self,
        created: float,
        level: int,
        name: str,
        event: str,
        message: str,
        fields: list[tuple[str, object]],
        context: LogContext | None,
        exception: str | None,
    ) -> str:
        stamp = self._utc_seconds(created)
        msecs = int((created - int(created)) * 1000)
        head: dict[str, object] = {
            "time": f"{stamp}.{msecs:03d}Z",
            "level": _LEVELS.get(level) or logging.getLevelName(level).lower(),
            "logger": name,
            "event": event,
            "message": message,
        }
        if context is not None:
            head["session"] = context.session
            head["peer"] = context.peer
            head.update(context.fields)
        head.update(_PROCESS_FIELDS)
        if exception:
            head["exception"] = exception
        return logfields.json_line(head, fields)

    def _seconds(self, created: float) -> str:
        """The date and time of ``created`` to the second, formatted once per second."""
        second = int(created)
        if second != self._second:  # called under the handler's lock
            self._stamp = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        return self._stamp

    def _utc_seconds(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
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

    def write_event(
        self,
        level: int,
        name: str,
        msg: str,
        args: tuple[object, ...],
        context: LogContext | None = None,
    ) -> None:
        """Log ``msg % args`` of logger ``name`` as :meth:`emit` would log its record (see
        :func:`_direct_handler` for when that is the same)."""
        formatter = self.formatter
        assert isinstance(formatter, Formatter)
        with self.lock:  # type: ignore[union-attr]
            line = formatter.line(time.time(), level, name, msg, args, context)
            self._add(line + self.terminator, level)

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


def setup(level: str = "info", style: str = "text") -> None:
    """Log to stderr, one line per record (see :class:`LoopHandler`), in ``style``
    (``[log] format``: ``text`` or ``json``)."""
    handler = LoopHandler(sys.stderr)
    handler.setFormatter(Formatter(style=style))
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
