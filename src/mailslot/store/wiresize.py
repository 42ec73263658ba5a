"""The POP3 wire size of a stored message (RFC 1939 sections 7 and 11).

LIST and the scan listing report "the exact size of the message", which is what RETR sends:
the stored bytes with every bare LF sent as CRLF, before dot-stuffing, and without the CRLF
that a message lacking a final newline gets before the terminating ``.``.  So the wire size is
the physical size plus one for every LF not preceded by CR.
"""

from __future__ import annotations


class WireSizeCounter:
    """Incremental wire size over chunks, for files too large to hold in memory.

    A CR ending one chunk and an LF starting the next form a CRLF, so the last byte of the
    previous chunk is remembered.
    """

    __slots__ = ("_after_cr", "physical", "wire")

    def __init__(self) -> None:
        self.physical = 0
        self.wire = 0
        self._after_cr = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        bare = chunk.count(b"\n") - chunk.count(b"\r\n")
        if self._after_cr and chunk[0] == 0x0A:
            bare -= 1
        self.physical += len(chunk)
        self.wire += len(chunk) + bare
        self._after_cr = chunk[-1] == 0x0D


def wire_size(data: bytes) -> int:
    """Return the number of octets RETR sends for ``data`` (see the module docstring)."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")
