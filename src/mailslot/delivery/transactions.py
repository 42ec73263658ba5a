"""LMTP DATA commands in progress (RFC 2033 section 4.2), counted so that a server that stops
lets them end first."""

from __future__ import annotations

import asyncio


class Transactions:
    """The DATA commands in progress, from ``DATA`` to the last recipient's reply.

    A server that stops or retires lets them end before its process does: exiting between
    a message's delivery and its reply would make the MTA send the message again.
    """

    def __init__(self) -> None:
        self.count = 0
        self._ended: asyncio.Event | None = None

    def begin(self) -> None:
        self.count += 1

    def end(self) -> None:
        self.count -= 1
        if self.count == 0 and self._ended is not None:
            self._ended.set()

    async def finished(self) -> None:
        """Return once no DATA command is in progress."""
        while self.count:
            if self._ended is None or self._ended.is_set():
                self._ended = asyncio.Event()
            await self._ended.wait()
