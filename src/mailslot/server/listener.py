"""Listening sockets for POP3: implicit TLS (RFC 8314 section 3.3), STLS (RFC 2595), plain.

Each accepted connection first takes a slot from the connection limits, then becomes a
:class:`~mailslot.server.session.Session`.  Shutdown stops accepting at once, lets running
sessions finish until a deadline, then cancels the rest (which deletes nothing: only a
completed QUIT commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from mailslot.config import ListenerConfig
from mailslot.log import escape
from mailslot.protocol.connection import CoreConfig
from mailslot.protocol.responses import Code, err
from mailslot.server.session import Session, SessionContext

logger = logging.getLogger("mailslot.listener")


class Pop3Listener:
    """One ``[[listener]]`` with ``protocol = "pop3"``."""

    def __init__(
        self, config: ListenerConfig, context: SessionContext, *, reuse_port: bool = False
    ) -> None:
        self.config = config
        self._context = context
        self._reuse_port = reuse_port
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @staticmethod
    def core_config(config: ListenerConfig, base: CoreConfig) -> CoreConfig:
        """The core's view of this listener: whether TLS is on from the start or offered."""
        return CoreConfig(
            tls_active=config.tls == "implicit",
            starttls_available=config.tls == "starttls",
            allow_plaintext=base.allow_plaintext,
            line_length=base.line_length,
            sasl_line_length=base.sasl_line_length,
            max_bad_commands_before_login=base.max_bad_commands_before_login,
            max_bad_commands=base.max_bad_commands,
            greeting=base.greeting,
        )

    async def start(self) -> None:
        implicit = self.config.tls == "implicit"
        self._server = await asyncio.start_server(
            self._accept,
            self.config.address,
            self.config.port,
            ssl=self._context.tls if implicit else None,
            ssl_handshake_timeout=self._context.handshake_timeout if implicit else None,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
            backlog=1024,
            limit=self._context.core.sasl_line_length * 2,
        )
        for sock in self._server.sockets:
            logger.info(
                "listening: pop3 %s tls=%s", format_address(sock.getsockname()), self.config.tls
            )

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server else ()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "unknown"
        limits = self._context.limits
        refusal = limits.acquire_connection(address)
        try:
            if refusal is not None:
                logger.info("refused %s: %s", escape(format_address(peer)), refusal)
                writer.write(err(refusal.capitalize() + ".", Code.SYS_TEMP))
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError, OSError):
                    async with asyncio.timeout(5):
                        await writer.wait_closed()
                return
            try:
                session = Session(reader, writer, self._context, address, format_address(peer))
                session.log.info("connect: listener=%s", self.config.tls)
                await session.run()
            finally:
                limits.release_connection(address)
        finally:
            self._sessions.discard(task)

    async def close(self, deadline: float) -> None:
        """Stop accepting; wait up to ``deadline`` seconds for sessions, then cancel them."""
        if self._server is not None:
            self._server.close()
        if self._sessions:
            _, pending = await asyncio.wait(set(self._sessions), timeout=deadline)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()


def format_address(address: object) -> str:
    """``1.2.3.4:995`` or ``[::1]:995``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
