"""A strict, minimal POP3 client for load generation (RFC 1939, RFC 2449, RFC 2595, RFC 8314).

It is an ``asyncio.Protocol`` over a single ``bytearray`` rather than ``StreamReader``: a
multi-line reply ends in CRLF.CRLF whose first CRLF may be the status line's own (an empty
listing), which ``readuntil`` cannot express, and one buffer with ``find`` is also the cheapest
way to cut 44 KB replies out of the stream.

Every reply is checked; whatever a correct server would not send raises :class:`ReplyError`,
so a run with errors is never reported as a result.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Literal, cast

TlsMode = Literal["none", "starttls", "implicit"]
TERMINATOR = b"\r\n.\r\n"
# Replies are small except RETR; this bounds a runaway server, not a real reply.
MAX_BUFFER = 64 * 1024 * 1024
SERVER_NAME = "localhost"


class ReplyError(Exception):
    """The server sent something a correct POP3 server would not."""


class _Buffer(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_BUFFER:
            self._lost = ReplyError("reply larger than MAX_BUFFER")
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._lost = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def more(self) -> None:
        if self._lost is not None:
            raise self._lost
        if self._eof:
            raise ReplyError("connection closed by server")
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter
        self._waiter = None
        if self._lost is not None:
            raise self._lost

    async def take_until(self, sep: bytes, start: int = 0, drop: int = 0) -> bytes:
        """Remove the buffer up to and including the first ``sep`` at ``start``+; return it
        without the last ``drop`` octets."""
        pos = start
        while True:
            end = self.data.find(sep, pos)
            if end >= 0:
                end += len(sep)
                # One copy: slicing the bytearray, or the bytes, would make a second.
                with memoryview(self.data) as view:
                    out = bytes(view[: end - drop])
                del self.data[:end]
                return out
            pos = max(start, len(self.data) - len(sep) + 1)
            await self.more()


def unstuff(raw: bytes) -> bytes:
    """Undo RFC 1939 section 3 byte-stuffing of a body that starts at a line start."""
    if b"\r\n." not in raw and not raw.startswith(b"."):
        return raw
    return (b"\r\n" + raw).replace(b"\r\n.", b"\r\n")[2:]


class Pop3Client:
    """One POP3 connection; commands may be pipelined with :meth:`send` + the ``read_*``."""

    def __init__(self, proto: _Buffer, transport: asyncio.Transport) -> None:
        self._proto = proto
        self._transport = transport
        self.greeting = b""

    @classmethod
    async def open(
        cls, port: int, tls: TlsMode, ctx: ssl.SSLContext | None, host: str = "127.0.0.1"
    ) -> tuple[Pop3Client, float]:
        """Connect, read the greeting (and upgrade with STLS); returns the greeting latency."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        stage = "TLS connect" if tls == "implicit" else "connect"
        try:
            transport, proto = await loop.create_connection(
                _Buffer,
                host,
                port,
                ssl=ctx if tls == "implicit" else None,
                server_hostname=SERVER_NAME if tls == "implicit" else None,
            )
            client = cls(proto, transport)
            stage = "greeting"
            client.greeting = await client.read_status()
            greeting_latency = time.perf_counter() - t0
            if tls == "starttls":
                assert ctx is not None
                stage = "STLS"
                client.send(b"STLS")
                await client.read_status()
                if proto.data:
                    # RFC 2595 section 4: nothing may follow +OK before the handshake.
                    raise ReplyError("bytes after STLS +OK before the TLS handshake")
                stage = "STLS handshake"
                new = await loop.start_tls(transport, proto, ctx, server_hostname=SERVER_NAME)
                if new is None:  # only when the loop has no TLS support at all
                    raise RuntimeError("start_tls returned no transport")
                client._transport = proto.transport = new
        except BaseException as exc:
            # Which step failed is what tells a refused accept from a failed handshake.
            exc.add_note(f"during {stage}")
            raise
        return client, greeting_latency

    def send(self, *lines: bytes) -> None:
        self._transport.write(b"".join(line + b"\r\n" for line in lines))

    async def read_status(self) -> bytes:
        line = await self._proto.take_until(b"\r\n")
        if not line.startswith(b"+OK"):
            raise ReplyError(f"expected +OK, got {line[:80]!r}")
        return line

    async def read_multiline(self) -> bytes:
        """Read ``+OK ...`` and a dot-terminated body; returns the unstuffed body."""
        return unstuff(await self.read_stuffed())

    async def read_stuffed(self, at_least: int = 0) -> bytes:
        """Read ``+OK ...`` and a dot-terminated body; returns the body as sent.

        That is still dot-stuffed (RFC 1939 section 3) and ends with the CRLF of its last
        line; the terminating ``.`` line is taken off.  With ``at_least`` (a RETR's LIST
        size: stuffing only adds octets), the terminator is looked for only from there on,
        not in every octet of the body: searching took as much of the load generator's CPU
        as checking the body's CRC twice.  A server that sent fewer octets still fails the
        caller's check: what comes back then runs on into whatever followed.
        """
        await self.read_status()
        proto = self._proto
        while len(proto.data) < 3:
            await proto.more()
        if proto.data.startswith(b".\r\n"):
            del proto.data[:3]
            return b""
        # The terminator's CRLF is the body's last line end.
        return await proto.take_until(TERMINATOR, start=max(0, at_least - 2), drop=3)

    async def command(self, line: bytes) -> bytes:
        self.send(line)
        return await self.read_status()

    async def login(self, user: str, password: str) -> None:
        stage = "USER"
        try:
            await self.command(b"USER " + user.encode())
            stage = "PASS"
            await self.command(b"PASS " + password.encode())
        except BaseException as exc:
            exc.add_note(f"during {stage}")
            raise

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT")
        finally:
            self.close()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()


def parse_listing(body: bytes, expect_count: int) -> list[tuple[int, bytes]]:
    """Parse a LIST or UIDL body into ``(msg, value)``, checking numbering 1..count."""
    out: list[tuple[int, bytes]] = []
    for i, line in enumerate(body.split(b"\r\n")[:-1], start=1):
        num, _, value = line.partition(b" ")
        if int(num) != i or not value:
            raise ReplyError(f"bad listing line {line[:80]!r}")
        out.append((i, value))
    if len(out) != expect_count or (body and not body.endswith(b"\r\n")):
        raise ReplyError(f"listing has {len(out)} entries, STAT said {expect_count}")
    return out


def parse_stat(line: bytes) -> tuple[int, int]:
    parts = line.split()
    if len(parts) < 3:
        raise ReplyError(f"bad STAT reply {line[:80]!r}")
    return int(parts[1]), int(parts[2])
