"""CRLF line framing with a hard cap (RFC 1939 section 3, RFC 2449 section 4).

Commands are lines ending in CRLF; RFC 2449 limits a command line to 255 octets including the
CRLF.  SASL responses (RFC 5034 section 4) may be longer, so the cap is chosen per line by the
caller.  A bare LF is accepted as a line end, as most servers do.  Memory is bounded: when a
line grows past the cap, its bytes are dropped until the next LF and the caller is told once.
"""

from __future__ import annotations

from typing import Final


class _TooLong:
    """Marker returned once for a line that exceeded the cap."""

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG: Final = _TooLong()


class LineBuffer:
    """Accumulates received bytes and hands out complete lines without their line end."""

    __slots__ = ("_buffer", "_discarding", "_scan_from", "eof")

    def __init__(self) -> None:
        # None while empty: an idle session, whose commands were all read, holds no buffer.
        self._buffer: bytearray | None = None
        self._discarding = False
        self._scan_from = 0
        self.eof = False

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` marks the end of the stream."""
        if not data:
            self.eof = True
        elif self._buffer is None:
            self._buffer = bytearray(data)
        else:
            self._buffer += data

    def __len__(self) -> int:
        return 0 if self._buffer is None else len(self._buffer)

    def _drop(self) -> None:
        self._buffer = None
        self._scan_from = 0

    def clear(self) -> bytes:
        """Drop and return everything buffered (used when the transport changes under us)."""
        data = b"" if self._buffer is None else bytes(self._buffer)
        self._drop()
        return data

    def next_line(self, limit: int) -> bytes | _TooLong | None:
        """Return the next line (without CRLF), :data:`TOO_LONG`, or ``None`` if incomplete.

        ``limit`` counts the line end, as RFC 2449 does.
        """
        while True:
            buffer = self._buffer
            if buffer is None:
                return None
            index = buffer.find(b"\n", self._scan_from)
            if index < 0:
                if self._discarding:
                    self._drop()
                    return None
                if len(buffer) >= limit:
                    # Cannot become a valid line: drop it now to keep memory bounded.
                    self._drop()
                    self._discarding = True
                    return TOO_LONG
                self._scan_from = len(buffer)
                return None
            line = bytes(buffer[:index])
            if index + 1 == len(buffer):
                self._drop()
            else:
                del buffer[: index + 1]
                self._scan_from = 0
            if self._discarding:
                self._discarding = False
                continue
            if len(line) + 1 > limit:
                return TOO_LONG
            if line.endswith(b"\r"):
                line = line[:-1]
            return line
