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
        self._buffer = bytearray()
        self._discarding = False
        self._scan_from = 0
        self.eof = False

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` marks the end of the stream."""
        if not data:
            self.eof = True
            return
        self._buffer += data

    def __len__(self) -> int:
        return len(self._buffer)

    def clear(self) -> bytes:
        """Drop and return everything buffered (used when the transport changes under us)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        self._scan_from = 0
        return data

    def next_line(self, limit: int) -> bytes | _TooLong | None:
        """Return the next line (without CRLF), :data:`TOO_LONG`, or ``None`` if incomplete.

        ``limit`` counts the line end, as RFC 2449 does.
        """
        while True:
            index = self._buffer.find(b"\n", self._scan_from)
            if index < 0:
                if self._discarding:
                    self._buffer.clear()
                    self._scan_from = 0
                    return None
                if len(self._buffer) >= limit:
                    # Cannot become a valid line: drop it now to keep memory bounded.
                    self._buffer.clear()
                    self._scan_from = 0
                    self._discarding = True
                    return TOO_LONG
                self._scan_from = len(self._buffer)
                return None
            line = bytes(self._buffer[:index])
            del self._buffer[: index + 1]
            self._scan_from = 0
            if self._discarding:
                self._discarding = False
                continue
            if len(line) + 1 > limit:
                return TOO_LONG
            if line.endswith(b"\r"):
                line = line[:-1]
            return line
