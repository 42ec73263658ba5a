"""Fixtures for the transport tests: an in-process server with a Config built in the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.server.inprocess import InProcessServer
from tests.support.tls import TlsFiles

InProcessFactory = Callable[..., InProcessServer]


@pytest.fixture
def inprocess(tmp_path: Path, tls_files: TlsFiles) -> Iterator[InProcessFactory]:
    """``inprocess(**InProcessServer options)`` -> a started server, stopped at teardown."""
    servers: list[InProcessServer] = []

    def make(**options: Any) -> InProcessServer:
        server = InProcessServer(tmp_path / f"inprocess{len(servers)}", tls_files, **options)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()
