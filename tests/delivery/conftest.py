"""Delivery fixtures: an LMTP server on a real 127.0.0.1 socket, run on an event loop in a
background thread so tests can drive it with the blocking ``smtplib.LMTP`` client, over a real
Maildir whose ``fsync`` a test can make fail (a full disk).
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailslot.auth.base import Authenticator
from mailslot.auth.memory import MemoryAuthenticator
from mailslot.config import DeliveryConfig, ListenerConfig
from mailslot.delivery.lmtp import start_lmtp_server
from mailslot.delivery.quota import UsageProbe
from mailslot.store.base import Store
from mailslot.store.maildir import MaildirStore

T = TypeVar("T")
DEADLINE = 30.0  # seconds; a bound for a hung test, never a pacing delay


class LoopThread:
    """An asyncio loop running in a daemon thread; :meth:`run` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(DEADLINE)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE)
        self.loop.close()


class FaultyFsync:
    """``os.fsync`` until :attr:`error` is set; then calls fail with that errno.

    With :attr:`only_call` set, only the call with that number (counting from 1) fails.
    """

    def __init__(self) -> None:
        self.error: int | None = None
        self.only_call: int | None = None
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.error is not None and self.only_call in (None, self.calls):
            raise OSError(self.error, os.strerror(self.error))
        os.fsync(fd)


@dataclass
class LmtpServer:
    """A running LMTP listener and the Maildirs behind it."""

    port: int
    path: str | None
    mail_root: Path
    store: Store
    fsync: FaultyFsync
    server: asyncio.AbstractServer = field(repr=False)

    def maildir(self, user: str) -> Path:
        return self.mail_root / user / "Maildir"

    def messages(self, user: str) -> list[bytes]:
        """The contents of the user's new/ and cur/ files, in name order."""
        found: list[tuple[str, bytes]] = []
        for sub in ("new", "cur"):
            directory = self.maildir(user) / sub
            if directory.is_dir():
                found += [(p.name, p.read_bytes()) for p in directory.iterdir()]
        return [data for _, data in sorted(found)]

    def names(self, user: str, sub: str = "new") -> list[str]:
        directory = self.maildir(user) / sub
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []

    def client(self) -> smtplib.LMTP:
        if self.path is not None:
            client = smtplib.LMTP(self.path, timeout=DEADLINE)
        else:
            client = smtplib.LMTP("127.0.0.1", self.port, timeout=DEADLINE)
        client.ehlo("client.test")
        return client


@dataclass
class Transaction:
    """What one MAIL/RCPT.../DATA exchange got back."""

    rcpt: list[tuple[int, bytes]]
    data: list[tuple[int, bytes]]


def transaction(
    client: smtplib.LMTP,
    sender: str,
    recipients: list[str],
    message: bytes,
    mail_options: tuple[str, ...] = (),
) -> Transaction:
    """Run one LMTP transaction; read one DATA reply per accepted recipient (RFC 2033 4.2).

    ``smtplib.LMTP.sendmail`` reads a single DATA reply, so the extra replies are read here.
    """
    code, text = client.mail(sender, list(mail_options))
    assert code == 250, (code, text)
    rcpt = [client.rcpt(recipient) for recipient in recipients]
    accepted = sum(1 for code, _ in rcpt if code == 250)
    data: list[tuple[int, bytes]] = []
    if accepted:
        data.append(client.data(message))
        data += [client.getreply() for _ in range(accepted - 1)]
    else:
        client.rset()
    return Transaction(rcpt, data)


Factory = Any


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def lmtp_factory(tmp_path: Path, loop_thread: LoopThread) -> Iterator[Factory]:
    """``lmtp_factory(delivery=..., users=..., unix=False, usage=None)`` -> :class:`LmtpServer`."""
    servers: list[LmtpServer] = []

    def make(
        delivery: DeliveryConfig | None = None,
        users: Authenticator | None = None,
        *,
        unix: bool = False,
        usage: UsageProbe | None = None,
        store: Store | None = None,
        socket_path: Path | None = None,
    ) -> LmtpServer:
        mail_root = tmp_path / f"mail{len(servers)}"
        fsync = FaultyFsync()
        if store is None:
            store = MaildirStore(f"{mail_root}/{{user}}/Maildir", fsync=fsync)
        if users is None:
            users = MemoryAuthenticator({"alice": "a", "bob": "b", "carol": "c"})
        if socket_path is not None:
            path: str | None = str(socket_path)
        else:
            path = str(tmp_path / f"lmtp{len(servers)}.sock") if unix else None
        listener = ListenerConfig(
            protocol="lmtp",
            address="127.0.0.1",
            port=0,
            tls="none",
            path=Path(path) if path else None,
        )

        async def start() -> asyncio.AbstractServer:
            return await start_lmtp_server(
                listener, delivery or DeliveryConfig(), store, users, "mx.test", usage=usage
            )

        server = loop_thread.run(start())
        port = 0 if unix else server.sockets[0].getsockname()[1]
        running = LmtpServer(port, path, mail_root, store, fsync, server)
        servers.append(running)
        return running

    yield make

    async def close(server: asyncio.AbstractServer) -> None:
        server.close()
        await server.wait_closed()

    for running in servers:
        loop_thread.run(close(running.server))
