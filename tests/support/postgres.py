"""A private PostgreSQL cluster for the test session: ``initdb`` into a temporary directory,
``pg_ctl start`` on a free 127.0.0.1 port (and a Unix socket in that directory), stopped at
the end.

PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the
``postgres`` system account if there is one, else to ``nobody``, and lives in a directory that
account owns.  The binaries are looked up on ``PATH`` and then in Debian's
``/usr/lib/postgresql/<version>/bin`` (newest first); Debian's ``postgresql`` package provides
them.  Without them the fixtures skip, saying why, except under ``CI=true``, where a missing
PostgreSQL is a failure: CI must not silently lose the backend's tests.

The cluster is for tests only: ``trust`` authentication, ``fsync = off`` (a crash of the test
machine loses nothing anyone needs, and CREATE DATABASE per test stays cheap).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .server import free_port

START_DEADLINE = 60  # seconds for pg_ctl -w; it polls, this is not a threshold
_counter = itertools.count()


class PostgresUnavailable(RuntimeError):
    """No usable PostgreSQL on this machine; the message says what is missing."""


def find_binaries() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        candidates.append(Path(found))
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresUnavailable(
        "PostgreSQL's initdb, pg_ctl and postgres were not found on PATH or in "
        "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"
    )


def _account() -> pwd.struct_passwd | None:
    """Whom the cluster runs as: ``None`` for the current user, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root and neither 'postgres' nor 'nobody' exists")


@dataclass
class PostgresServer:
    """One running cluster; :meth:`database` makes a fresh, empty database for a test."""

    bin_dir: Path
    directory: Path
    port: int
    account: pwd.struct_passwd | None
    host: str = "127.0.0.1"
    superuser: str = "postgres"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        kwargs: dict[str, object] = {}
        if self.account is not None:
            kwargs = {
                "user": self.account.pw_uid,
                "group": self.account.pw_gid,
                "extra_groups": [],  # not root's supplementary groups
            }
            env["HOME"] = str(self.directory)
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            args,
            env=env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
            **kwargs,
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{what} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )

    def initdb(self) -> None:
        result = self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        self._check(result, "initdb")
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.directory}'",
            "max_connections": "300",
            "shared_buffers": "64MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_min_messages": "warning",
        }
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        result = self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(START_DEADLINE),
            "start",
        )
        self._check(result, f"pg_ctl start (log: {self.log_path})")

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``fast`` disconnects every session, ``immediate`` as a crash)."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` on ``database`` as the superuser (through asyncpg); return its status."""
        import asyncio

        import asyncpg

        async def run() -> str:
            connection = await asyncpg.connect(self.dsn(database))
            try:
                return str(await connection.execute(sql))
            finally:
                await connection.close()

        return asyncio.run(run())

    def database(self, prefix: str = "t") -> str:
        """A new empty database; return its DSN."""
        name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def upgraded(self, prefix: str = "t") -> str:
        """A new database with mailslot's schema (``mailslot db upgrade``); return its DSN."""
        import asyncio

        import asyncpg

        from mailslot.store.postgresql import schema

        dsn = self.database(prefix)

        async def upgrade() -> None:
            connection = await asyncpg.connect(dsn)
            try:
                await schema.upgrade(connection)
            finally:
                await connection.close()

        asyncio.run(upgrade())
        return dsn


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a private cluster for the duration of the ``with`` block."""
    bin_dir = find_binaries()
    account = _account()
    directory = Path(tempfile.mkdtemp(prefix="mailslot-pg-"))
    try:
        if account is not None:
            os.chown(directory, account.pw_uid, account.pw_gid)
        server = PostgresServer(bin_dir, directory, free_port(), account)
        server.initdb()
        server.start()
        try:
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
