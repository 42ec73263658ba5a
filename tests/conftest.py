"""Fixtures shared by every test directory: TLS files and ``mailslot serve`` subprocesses."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # so `tests.support` imports under a bare `pytest` too
    sys.path.insert(0, str(_ROOT))

from tests.support.mariadb import (  # noqa: E402
    MariadbServer,
    MariadbUnavailable,
    running_mariadb,
)
from tests.support.postgres import (  # noqa: E402
    PostgresServer,
    PostgresUnavailable,
    running_postgres,
)
from tests.support.server import MailslotServer, ServerFactory  # noqa: E402
from tests.support.tls import TlsFiles, make_tls_files  # noqa: E402


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway root CA, intermediate and localhost/127.0.0.1/::1 certificate."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster for the whole session (tests/support/postgres.py).

    Without PostgreSQL the tests that need it skip, saying why; under CI=true they fail.
    """
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no PostgreSQL: {exc}")
        pytest.skip(f"no PostgreSQL: {exc}")


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariadbServer]:
    """A private MariaDB server for the whole session (tests/support/mariadb.py).

    Without MariaDB the tests that need it skip, saying why; under CI=true they fail.
    """
    try:
        with running_mariadb() as server:
            yield server
    except MariadbUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no MariaDB: {exc}")
        pytest.skip(f"no MariaDB: {exc}")


@pytest.fixture
def mailslot_factory(
    request: pytest.FixtureRequest, tmp_path: Path, tls_files: TlsFiles
) -> Iterator[ServerFactory]:
    """``mailslot_factory(**MailslotServer options, start=True)`` -> a running server.

    ``tls=`` gives other certificate files than the session's.  Every server made is stopped
    at teardown, and its log is attached to a failing report.
    """
    servers: list[MailslotServer] = []
    request.node.mailslot_servers = servers

    def make(*, start: bool = True, tls: TlsFiles | None = None, **options: Any) -> MailslotServer:
        directory = tmp_path / f"server{len(servers)}"
        server = MailslotServer(directory, tls or tls_files, **options)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def mailslot(mailslot_factory: ServerFactory) -> MailslotServer:
    """A server with the default config: one STLS listener and one implicit-TLS listener."""
    return mailslot_factory()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for server in getattr(item, "mailslot_servers", ()):
            report.sections.append((f"mailslot log {server.directory}", server.log()))
    return report
