"""A private MariaDB server for the test session: ``mariadb-install-db`` into a temporary
directory, ``mariadbd`` on a free 127.0.0.1 port and a Unix socket in that directory,
killed at the end.

As tests/support/postgres.py does for PostgreSQL: run as root, the server belongs to the
``mysql`` system account if there is one, else to ``nobody``, in a directory that account
owns.  Debian's ``mariadb-server`` package provides the programs (``/usr/sbin/mariadbd``);
without them the fixture skips, saying why, except under ``CI=true``, where a missing
MariaDB is a failure.

The server is for tests only: ``root`` logs in over the socket without a password, no
binary log, no durability (``innodb_flush_log_at_trx_commit = 0``: a stop is a clean
shutdown, so nothing committed is lost by it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .programs import find_program
from .server import free_port

START_DEADLINE = 60.0  # seconds for the socket to answer; it polls, this is not a threshold
_counter = itertools.count()


class MariadbUnavailable(RuntimeError):
    """No usable MariaDB on this machine; the message says what is missing."""


def _account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("mysql", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise MariadbUnavailable("running as root and neither 'mysql' nor 'nobody' exists")


@dataclass
class MariadbServer:
    """One running server; :meth:`database` makes a fresh database and a user for a test."""

    mariadbd: str
    directory: Path
    port: int
    account: pwd.struct_passwd | None
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def socket(self) -> Path:
        return self.directory / "mysqld.sock"

    @property
    def log_path(self) -> Path:
        return self.directory / "mariadb.log"

    def _as_account(self) -> dict[str, Any]:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def install(self, install_db: str) -> None:
        result = subprocess.run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={self.data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            cwd=self.directory,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            **self._as_account(),
        )
        if result.returncode != 0:
            raise MariadbUnavailable(
                f"mariadb-install-db failed ({result.returncode}): "
                f"{result.stderr.strip()[-2000:] or result.stdout[-2000:]}"
            )

    def start(self) -> None:
        """Start the server on the existing data directory; return once it answers."""
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    self.mariadbd,
                    "--no-defaults",
                    f"--datadir={self.data}",
                    f"--socket={self.socket}",
                    f"--port={self.port}",
                    f"--bind-address={self.host}",
                    f"--pid-file={self.directory / 'mariadbd.pid'}",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=16M",
                    "--innodb-log-file-size=16M",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--skip-name-resolve",
                    "--max-connections=300",
                ],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._as_account(),
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self.process.poll() is not None:
                raise MariadbUnavailable(
                    f"mariadbd exited with {self.process.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                self.execute("SELECT 1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise MariadbUnavailable(
                        f"mariadbd did not answer within {START_DEADLINE:g} s (log: "
                        f"{self.log_path})"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (SIGTERM: a clean shutdown, which keeps what was committed) and
        wait for it; killed if it takes longer than the start may."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(START_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def execute(self, *statements: str, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run ``statements`` as root over the socket; the last one's rows."""
        import pymysql

        connection = pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            password="",
            database=database,
            autocommit=True,
            charset="utf8mb4",
            connect_timeout=5,
        )
        try:
            rows: list[tuple[Any, ...]] = []
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
                    rows = list(cursor.fetchall())
            return rows
        finally:
            connection.close()

    def database(self, prefix: str = "t") -> tuple[str, str]:
        """A new empty database and a user (with a password) who may read it:
        ``(database name, DSN over TCP as that user)``."""
        name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        password = f"pw'{name}"  # a quote in it: the DSN must carry it intact
        literal = password.replace("'", "''")
        self.execute(
            f"CREATE DATABASE `{name}`",
            f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY '{literal}'",
            f"GRANT SELECT ON `{name}`.* TO '{name}'@'127.0.0.1'",
        )
        quoted = urllib.parse.quote(password, safe="")
        return name, f"mysql://{name}:{quoted}@{self.host}:{self.port}/{name}"


@contextlib.contextmanager
def running_mariadb() -> Iterator[MariadbServer]:
    """Start a private server for the duration of the ``with`` block."""
    mariadbd = find_program("mariadbd")
    install_db = find_program("mariadb-install-db")
    if mariadbd is None or install_db is None:
        raise MariadbUnavailable(
            "mariadbd or mariadb-install-db is not installed (Debian: apt-get install "
            "mariadb-server; scripts/test installs it)"
        )
    account = _account()
    directory = Path(tempfile.mkdtemp(prefix="mailslot-mariadb-"))
    try:
        if account is not None:
            os.chown(directory, account.pw_uid, account.pw_gid)
        server = MariadbServer(mariadbd, directory, free_port(), account)
        server.install(install_db)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
