"""An :class:`~mailslot.server.runner.Application` served in-process, on its own event loop
in a background thread, with a :class:`~mailslot.config.Config` built by the test.

Building the Config directly bypasses the loader's validation, which lets a test use limits
the loader rightly refuses (an idle timeout of a fraction of a second).  The test thread talks
to it with the blocking literal client; the server's log records reach pytest's ``caplog``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from tests.support.maildir import MaildirBuilder
from tests.support.passwd import DEFAULT_USERS, write_passwd
from tests.support.tls import TlsFiles

from mailslot.config import (
    AuthConfig,
    Config,
    LimitsConfig,
    ListenerConfig,
    ServerConfig,
    StoreConfig,
    TlsConfig,
)
from mailslot.server.runner import Application

_T = TypeVar("_T")
START_DEADLINE = 15.0  # a safety net, not a threshold


class InProcessServer:
    def __init__(
        self,
        directory: Path,
        tls_files: TlsFiles,
        *,
        listeners: tuple[ListenerConfig, ...] = (
            ListenerConfig(address="127.0.0.1", port=0, tls="starttls"),
            ListenerConfig(address="127.0.0.1", port=0, tls="implicit"),
        ),
        limits: LimitsConfig | None = None,
        auth: dict[str, Any] | None = None,
        server: ServerConfig | None = None,
        snapshot_cache: int | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.tls_files = tls_files
        self.users = {u.name: u for u in DEFAULT_USERS}
        self.mail_root = directory / "mail"
        passwd = write_passwd(directory / "users", list(DEFAULT_USERS))
        self.config = Config(
            listeners=listeners,
            tls=TlsConfig(certificate=tls_files.certificate, private_key=tls_files.private_key),
            auth=AuthConfig(
                passwd_file=passwd,
                **{"failure_delay": 0.0, "failure_delay_max": 0.0, **(auth or {})},
            ),
            store=StoreConfig(
                maildir=f"{self.mail_root}/{{user}}/Maildir",
                **({} if snapshot_cache is None else {"snapshot_cache": snapshot_cache}),
            ),
            limits=limits or LimitsConfig(),
            server=server or ServerConfig(shutdown_timeout=5.0),
        )
        self.app = Application(self.config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> InProcessServer:
        self._thread.start()
        self.call(self.app.start())
        return self

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(START_DEADLINE)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self.app.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_DEADLINE)
            self._loop.close()

    def address(self, tls: str = "starttls") -> tuple[str, int]:
        for listener in self.app.listeners:
            if listener.config.tls == tls:
                host, port = listener.sockets[0].getsockname()[:2]
                return str(host), int(port)
        raise LookupError(tls)

    def builder(self, user: str = "alice") -> MaildirBuilder:
        return MaildirBuilder(self.mail_root / user / "Maildir")

    def maildir(self, user: str = "alice") -> Path:
        return self.mail_root / user / "Maildir"

    def password(self, user: str = "alice") -> str:
        return self.users[user].password
