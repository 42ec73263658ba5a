"""Message bytes to the wire: CRLF line ends, dot-stuffing, TOP (RFC 1939 sections 3, 7, 11).

Messages are stored with LF (Maildir convention) or CRLF line ends.  On the wire every line
ends in CRLF; the octet count RFC 1939 section 11 asks for is the size with CRLF line ends,
before dot-stuffing.  A line that begins with "." gets one more "." (byte-stuffing); the
response ends with ".CRLF", preceded by a CRLF when the message lacked a final line end.

Everything here is incremental, so a message of any size streams in chunks.

Two of Dovecot's ``pop3_client_workarounds`` change what is sent, as Dovecot 2.3's POP3
server does (``fetch_callback`` in its ``src/pop3/pop3-commands.c``): ``outlook-no-nuls``
sends each NUL octet as 0x80 (one octet for one, so sizes stay exact), and ``oe-ns-eoh``
ends a message that has no empty line (no end of its header) with one: a CRLF after the
message, before the terminator.  That CRLF is not counted in LIST, STAT or RETR's octet
count, as in Dovecot, where sizes are the stored message's.
"""

from __future__ import annotations

import re

# A line that begins with ".": the LF before it and the dot.  bytes.replace() with this
# two-byte needle is pathologically slow in CPython when LFs are dense (about 270 us for a
# 45 KB message here, most of a RETR's server time); the regex engine's scan takes ~20 us.
_LINE_DOT = re.compile(rb"\n\.")


def wire_size(data: bytes) -> int:
    """The RFC 1939 octet count of a whole stored message: CRLF line ends, no stuffing."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


class CrlfConverter:
    """Turns every LF not preceded by CR into CRLF, across chunk boundaries."""

    __slots__ = ("_last_cr",)

    def __init__(self) -> None:
        self._last_cr = False

    def convert(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        prefix = b""
        if self._last_cr and chunk[0] == 0x0A:
            # The CR that ends the previous chunk and this LF form one CRLF already.
            prefix = b"\n"
            chunk = chunk[1:]
        self._last_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        return prefix + chunk.replace(b"\n", b"\r\n")


class DotStuffer:
    """Byte-stuffs lines that begin with "." and writes the terminator (RFC 1939 section 3)."""

    __slots__ = ("_at_line_start",)

    def __init__(self) -> None:
        self._at_line_start = True

    def stuff(self, chunk: bytes) -> bytes:
        """Stuff a chunk that already has CRLF line ends."""
        if not chunk:
            return chunk
        if b"\n." in chunk:
            chunk = _LINE_DOT.sub(b"\n..", chunk)
        if self._at_line_start and chunk[0] == 0x2E:
            chunk = b"." + chunk
        self._at_line_start = chunk[-1] == 0x0A
        return chunk

    def terminator(self) -> bytes:
        """The end of the multi-line response, with a CRLF first if the last line lacked one."""
        return b".\r\n" if self._at_line_start else b"\r\n.\r\n"


class TopFilter:
    """Passes the header, the blank line and ``lines`` body lines (RFC 1939 section 7, TOP).

    Works on CRLF-converted bytes.  A message without a blank line is all header and is
    passed whole.
    """

    __slots__ = ("_body_left", "_done", "_in_header", "_line_length")

    def __init__(self, lines: int) -> None:
        self._in_header = True
        self._body_left = lines
        self._line_length = 0
        self._done = False

    @property
    def done(self) -> bool:
        """True once everything TOP asked for has passed; the rest can be skipped."""
        return self._done

    def filter(self, chunk: bytes) -> bytes:
        if self._done:
            return b""
        out_end = 0
        position = 0
        length = len(chunk)
        while position < length:
            newline = chunk.find(b"\n", position)
            if newline < 0:
                self._line_length += length - position
                out_end = length
                break
            line_end = newline + 1
            line_length = self._line_length + line_end - position
            self._line_length = 0
            position = out_end = line_end
            if self._in_header:
                if line_length == 2:  # just CRLF: the header ends here
                    self._in_header = False
                    if self._body_left == 0:
                        self._done = True
                        break
            else:
                self._body_left -= 1
                if self._body_left == 0:
                    self._done = True
                    break
        return chunk[:out_end]


class HeaderEnd:
    """Watches CRLF-converted bytes for the empty line that ends a message's header."""

    __slots__ = ("_tail", "seen")

    def __init__(self) -> None:
        self._tail = b"\n"  # the message's start is a line start: a first empty line counts
        self.seen = False

    def feed(self, data: bytes) -> None:
        if self.seen or not data:
            return
        window = self._tail + data
        self.seen = b"\n\r\n" in window
        self._tail = window[-2:]


class MessageEncoder:
    """The whole pipeline for one RETR or TOP response body.

    ``no_nuls`` and ``end_of_header`` are Dovecot's ``outlook-no-nuls`` and ``oe-ns-eoh``
    (see the module docstring).
    """

    __slots__ = ("_crlf", "_header_end", "_no_nuls", "_stuffer", "_top")

    def __init__(
        self, top_lines: int | None = None, *, no_nuls: bool = False, end_of_header: bool = False
    ) -> None:
        self._crlf = CrlfConverter()
        self._stuffer = DotStuffer()
        self._top = TopFilter(top_lines) if top_lines is not None else None
        self._no_nuls = no_nuls
        self._header_end = HeaderEnd() if end_of_header else None

    @property
    def done(self) -> bool:
        """True when no more input is needed (TOP has what it wants)."""
        return self._top is not None and self._top.done

    def encode(self, chunk: bytes) -> bytes:
        if self._no_nuls and b"\x00" in chunk:
            chunk = chunk.replace(b"\x00", b"\x80")
        data = self._crlf.convert(chunk)
        if self._top is not None:
            data = self._top.filter(data)
        if self._header_end is not None:
            self._header_end.feed(data)
        return self._stuffer.stuff(data)

    def finish(self) -> bytes:
        terminator = self._stuffer.terminator()
        if self._header_end is not None and not self._header_end.seen:
            # Dovecot's oe-ns-eoh: the missing empty line, after the last line's CRLF.
            return terminator[:-3] + b"\r\n" + terminator[-3:]
        return terminator
