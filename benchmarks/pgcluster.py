"""A private PostgreSQL cluster for the benchmarks (benchmarks do not import ``tests``).

The same approach as ``tests/support/postgres.py``: ``initdb`` into a temp dir, run as the
``postgres`` (or ``nobody``) account when we are root, ``trust`` authentication on 127.0.0.1
and a free port.  Unlike the tests' cluster it loads ``pg_stat_statements`` (to count the
statements a POP3 session sends) and keeps ``fsync`` off, as in the tests: the benchmark
measures mailslot's and PostgreSQL's CPU per session, not the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.servers import free_port


def find_binaries() -> Path:
    initdb = shutil.which("initdb")
    candidates = [Path(initdb).resolve().parent] if initdb else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if all(os.access(directory / n, os.X_OK) for n in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise RuntimeError("PostgreSQL's initdb/pg_ctl/postgres not found (apt-get install postgresql)")


@dataclass
class Cluster:
    bin_dir: Path
    directory: Path
    port: int
    account: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        kwargs: dict[str, Any] = {}
        if self.account is not None:
            kwargs = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.directory)
        result = subprocess.run(
            args, env=env, cwd=self.directory, capture_output=True, text=True, check=False, **kwargs
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip() or result.stdout}")

    def start(self, max_connections: int = 200) -> None:
        self._run(
            *(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres"),
            *("--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"),
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.directory}'",
            "max_connections": str(max_connections),
            "shared_buffers": "128MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_preload_libraries": "'pg_stat_statements'",
            "pg_stat_statements.track_utility": "on",  # BEGIN and COMMIT are round trips too
            "log_min_messages": "warning",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        log = str(self.directory / "postgres.log")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "start")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
            )

    @property
    def pid(self) -> int:
        """The postmaster: the root of the process tree whose CPU we report."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def execute(self, sql: str, database: str = "postgres") -> Any:
        import asyncpg

        async def run() -> Any:
            connection = await asyncpg.connect(self.dsn(database))
            try:
                return await connection.fetch(sql)
            finally:
                await connection.close()

        return asyncio.run(run())


@contextlib.contextmanager
def running() -> Iterator[Cluster]:
    account = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                account = pwd.getpwnam(name)
                break
    directory = Path(tempfile.mkdtemp(prefix="mailslot-bench-pg-"))
    try:
        if account is not None:
            os.chown(directory, account.pw_uid, account.pw_gid)
        cluster = Cluster(find_binaries(), directory, free_port(), account)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
