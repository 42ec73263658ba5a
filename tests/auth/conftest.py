"""Auth fixtures: every contract test runs against each backend (as aioftp's tests/conftest.py
parametrises its path-io backends), plus a helper to drive coroutines without pytest-asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from passlib.hash import bcrypt
from tests.support.mariadb import MariadbServer
from tests.support.tls import TlsFiles

from mailslot.auth.base import Authenticator
from mailslot.auth.memory import MemoryAuthenticator
from mailslot.auth.passwdfile import PasswdFileAuthenticator
from mailslot.auth.sql import SqlAuthenticator
from mailslot.auth.sqldb import open_database
from mailslot.auth.sqlquery import compile_query

T = TypeVar("T")


# Authenticators whose pools belong to one run()'s event loop: closed before it ends, as a
# server closes them at shutdown (a pool is never carried into another loop).
_POOLED: list[Any] = []


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        try:
            return await coroutine
        finally:
            for owner in _POOLED:
                await owner.aclose()

    return asyncio.run(main())


# Cheap but real hashes: bcrypt at its minimum cost still goes through the slow-scheme
# (thread) path; SSHA256 and PLAIN go through the inline path.
PASSWORDS = {"alice": "wonderland", "bob": "b0b-secret", "carol": "pässwörd"}
STORED = {
    "alice": "{BLF-CRYPT}" + bcrypt.using(rounds=4, ident="2y").hash("wonderland"),
    "bob": "{SSHA256}4Ys6aPxMyOvypjBBgDoBGq90GnapMNQd+LzBMHH2soF8TWwg",  # doveadm pw
    "carol": "{PLAIN}pässwörd",
}
HOMES = {"alice": "/home/alice"}


def write_passwd(path: Path, stored: dict[str, str], homes: dict[str, str]) -> None:
    lines = ["# mailslot test users", ""]
    for name, value in stored.items():
        home = homes.get(name)
        lines.append(f"{name}:{value}:1000:1000::{home}::" if home else f"{name}:{value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def _fill_postgresql(dsn: str) -> None:
    from mailslot.store.postgresql import schema

    connection = await asyncpg.connect(dsn)
    try:
        await schema.upgrade(connection)
        await connection.executemany(
            "INSERT INTO mailslot_users (name, password, home) VALUES ($1, $2, $3)",
            [(name, value, HOMES.get(name)) for name, value in STORED.items()],
        )
    finally:
        await connection.close()


# A Dovecot-style passdb table, and the query a dovecot-sql.conf.ext would hold for it.
SQL_QUERY = (
    "SELECT username AS user, password, home AS userdb_home FROM users "
    "WHERE username = '%n' AND domain = '%d' AND active = '1'"
)
_SQL_ROWS = [(name, "", value, HOMES.get(name)) for name, value in STORED.items()]


async def fill_sql_postgresql(dsn: str, rows: list[tuple[str, str, str, str | None]]) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "CREATE TABLE users (username text NOT NULL, domain text NOT NULL,"
            " password text, home text, active char(1) NOT NULL DEFAULT '1',"
            " PRIMARY KEY (username, domain))"
        )
        await connection.executemany(
            "INSERT INTO users (username, domain, password, home) VALUES ($1, $2, $3, $4)", rows
        )
    finally:
        await connection.close()


def fill_sql_mysql(
    mariadb: MariadbServer, database: str, rows: list[tuple[str, str, str, str | None]]
) -> None:
    import pymysql

    # utf8mb4_bin: user names compare as PostgreSQL's do (MariaDB's default collation
    # would let "Alice" match "alice"; docs/configuration.md says so).
    mariadb.execute(
        "CREATE TABLE users (username varchar(255) NOT NULL, domain varchar(255) NOT NULL,"
        " password varchar(255), home varchar(255), active char(1) NOT NULL DEFAULT '1',"
        " PRIMARY KEY (username, domain)) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        database=database,
    )
    connection = pymysql.connect(
        unix_socket=str(mariadb.socket), user="root", database=database, charset="utf8mb4"
    )
    try:
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO users (username, domain, password, home) VALUES (%s, %s, %s, %s)",
                rows,
            )
        connection.commit()
    finally:
        connection.close()


def sql_authenticator(
    request: pytest.FixtureRequest,
    driver: str,
    rows: list[tuple[str, str, str, str | None]] | None = None,
    query: str = SQL_QUERY,
    **options: Any,
) -> SqlAuthenticator:
    """A SqlAuthenticator over a fresh database of ``driver`` holding ``rows``."""
    rows = _SQL_ROWS if rows is None else rows
    if driver == "postgresql":
        dsn = request.getfixturevalue("postgres").database("sqlauth")
        run(fill_sql_postgresql(dsn, rows))
        database = open_database("postgresql", dsn, size=2)
    else:
        mariadb: MariadbServer = request.getfixturevalue("mariadb")
        name, dsn = mariadb.database("sqlauth")
        fill_sql_mysql(mariadb, name, rows)
        database = open_database("mysql", dsn, size=2)
    authenticator = SqlAuthenticator(database, compile_query(query, driver), **options)  # type: ignore[arg-type]
    _POOLED.append(authenticator)
    request.addfinalizer(lambda: _POOLED.remove(authenticator))
    return authenticator


DOVECOT_AUTH = """
auth_failure_delay = 0
auth_username_format = %u
service auth {
  unix_listener mailslot-client {
    mode = 0666
  }
  unix_listener mailslot-userdb {
    mode = 0666
  }
}
"""


@pytest.fixture(scope="session")
def dovecot_auth(tls_files: TlsFiles) -> Iterator[Path]:
    """A private Dovecot whose passwd-file holds STORED; yields its run directory.

    ``username_format=%u`` keeps names as given (Dovecot's default lower-cases them, which
    the contract's case test would not expect of a passdb).
    """
    from tests.support.dovecot import DovecotServer

    server = DovecotServer(tls_files, [], blocks=DOVECOT_AUTH)
    # Every line with uid and gid: Dovecot's userdb wants them.
    lines = [
        f"{name}:{value}:{server.uid}:{server.gid}::{HOMES.get(name, '')}::\n"
        for name, value in STORED.items()
    ]
    (server.directory / "users").write_text("".join(lines), encoding="utf-8")
    (server.directory / "users").chmod(0o644)
    with server:
        yield server.directory / "run"


@pytest.fixture(
    params=["passwdfile", "memory", "postgresql", "sql-postgresql", "sql-mysql", "dovecot"]
)
def authenticator(request: pytest.FixtureRequest, tmp_path: Path) -> Authenticator:
    if request.param.startswith("sql-"):
        return sql_authenticator(request, request.param.removeprefix("sql-"))
    if request.param == "dovecot":
        from mailslot.auth.dovecot import DovecotAuthenticator

        run_dir = request.getfixturevalue("dovecot_auth")
        return DovecotAuthenticator(
            run_dir / "mailslot-client",
            userdb_socket=run_dir / "mailslot-userdb",
            assumed_delay=0.0,  # the test's Dovecot has auth_failure_delay = 0
        )
    if request.param == "postgresql":
        from mailslot.auth.postgresql import PostgresAuthenticator
        from mailslot.store.postgresql.pool import LazyPool

        dsn = request.getfixturevalue("postgres").database("auth")
        run(_fill_postgresql(dsn))
        return PostgresAuthenticator(LazyPool(dsn, size=2))
    if request.param == "memory":
        # The fake takes plaintext for carol, as a test would write it.
        users = dict(STORED, carol=PASSWORDS["carol"])
        return MemoryAuthenticator(users, homes=HOMES)
    path = tmp_path / "passwd"
    write_passwd(path, STORED, HOMES)
    return PasswdFileAuthenticator(path)
