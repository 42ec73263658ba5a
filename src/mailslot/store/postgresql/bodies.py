"""A message body written into ``mailslot_bodies`` as its chunks come, never whole.

A delivery binds its body as one parameter (:data:`~.queries.DELIVER`: LMTP and ``mailslot
deliver`` hold a message whole, under their size limit).  ``mailslot migrate`` copies
messages of any size, so a large one goes by ``COPY mailslot_bodies FROM STDIN`` in
PostgreSQL's binary format (the COPY reference's "Binary Format": a signature, a tuple whose
fields are each a length and its octets, a trailer): the one ``bytea`` field is announced by
its length, then its octets follow in the COPY protocol's CopyData messages as they are read
(asyncpg sends them under the socket's flow control).  The caller measures the body first
(:class:`BodyScan`: its length, and the header length TOP needs, RFC 1939 section 7); a body
that then yields other than that many octets fails the COPY (:class:`BodyChanged`), so its
transaction commits nothing.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

# PGCOPY signature, flags (no OIDs), header extension length 0; then a tuple of three fields.
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TUPLE = struct.pack("!h", 3)
_TRAILER = struct.pack("!h", -1)
# The largest field the format can announce (a bytea is limited to 1 GB anyway).
LARGEST = 2**31 - 1


class BodyChanged(Exception):
    """The body streamed for COPY is not the length measured before: nothing is written."""


class BodyScan:
    """The length of a body fed in chunks, and its header's (what
    :func:`~.store.header_length` gives for the whole), keeping two octets at most."""

    __slots__ = ("_header", "_tail", "length")

    def __init__(self) -> None:
        self.length = 0
        self._header: int | None = None
        # The blank line ending the header may straddle chunks; the body seen as preceded
        # by a line end makes a blank line at its very start the same search.
        self._tail = b"\n"

    def feed(self, chunk: bytes) -> None:
        if self._header is None:
            window = self._tail + chunk
            start = self.length - len(self._tail) + 1  # offset in the body of window[0]
            ends = [
                found + len(blank)
                for blank in (b"\n\n", b"\n\r\n")
                if (found := window.find(blank)) >= 0
            ]
            if ends:
                self._header = start + min(ends) - 1
            self._tail = window[-2:]
        self.length += len(chunk)

    @property
    def header(self) -> int:
        """Octets up to and including the empty line ending the header, or all of them."""
        return self.length if self._header is None else self._header


async def copy_body(
    connection: Any, account: int, seq: int, length: int, chunks: AsyncIterable[bytes]
) -> None:
    """Insert ``mailslot_bodies`` row (``account``, ``seq``) of ``length`` octets, its body
    sent as ``chunks`` yields it.  Raises :class:`BodyChanged` (the COPY fails: nothing is
    inserted) if ``chunks`` yields another number of octets; the caller's transaction
    must then be rolled back, as on any error."""
    if not 0 <= length <= LARGEST:
        raise ValueError(f"a body of {length} octets cannot be stored")

    async def stream() -> AsyncIterator[bytes]:
        yield _HEADER + _TUPLE + struct.pack("!iqiqi", 8, account, 8, seq, length)
        sent = 0
        async for chunk in chunks:
            sent += len(chunk)
            if sent > length:
                raise BodyChanged(f"the body grew beyond the {length} octets measured")
            if chunk:
                yield chunk
        if sent != length:
            raise BodyChanged(f"the body has {sent} octets, {length} were measured")
        yield _TRAILER

    await connection.copy_to_table(
        "mailslot_bodies", source=stream(), columns=("account_id", "seq", "body"), format="binary"
    )
