"""``[auth] backend = "sql"`` in a real ``mailslot serve``, on a real PostgreSQL and a real
MariaDB (tests/support/postgres.py, tests/support/mariadb.py), with poplib over TLS.

The query is the one of Dovecot's example ``dovecot-sql.conf.ext`` (``username`` and
``domain`` columns, ``'%n'`` and ``'%d'``).  A right password logs in; a wrong password and
an unknown user get the same reply (RFC 3206 ``[AUTH]``); a name made to break out of the
quotes (``x'OR'1'='1``) logs in as nobody; the database stopped is ``[SYS/TEMP]`` (RFC 3206
section 4) with one log line and no traceback, and logins work again once it is back.
"""

from __future__ import annotations

import asyncio
import os
import poplib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tests.support.mariadb import MariadbServer
from tests.support.passwd import DEFAULT_USERS, PasswdUser, password_field
from tests.support.popclient import pop3_connect
from tests.support.server import Listener, MailslotServer, ServerFactory

DOVECOT_QUERY = (
    "SELECT username, domain, password FROM users WHERE username = '%n' AND domain = '%d'"
)
CREATE = (
    "CREATE TABLE users (username varchar(100) NOT NULL, domain varchar(100) NOT NULL,"
    " password varchar(255) NOT NULL, PRIMARY KEY (username, domain))"
)


def _rows(users: Sequence[PasswdUser]) -> list[tuple[str, str, str]]:
    rows = []
    for user in users:
        local, _, domain = user.name.partition("@")
        # The hash without its {SCHEME} for one of them: default_pass_scheme = "CRYPT".
        rows.append((local, domain, password_field(user).removeprefix("{SHA512-CRYPT}")))
    return rows


def _fill_postgresql(dsn: str, rows: list[tuple[str, str, str]]) -> None:
    async def fill() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(CREATE)
            await connection.executemany("INSERT INTO users VALUES ($1, $2, $3)", rows)
        finally:
            await connection.close()

    asyncio.run(fill())


def _fill_mariadb(mariadb: MariadbServer, name: str, rows: list[tuple[str, str, str]]) -> None:
    values = ", ".join(
        "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in row) + ")" for row in rows
    )
    mariadb.execute(
        CREATE + " COLLATE utf8mb4_bin",
        f"INSERT INTO users VALUES {values}",  # noqa: S608 (the test's own rows)
        database=name,
    )


class Database:
    """The driver's server, started and stopped by the test."""

    def __init__(self, request: pytest.FixtureRequest, driver: str) -> None:
        self.driver = driver
        self.server: Any = request.getfixturevalue(
            "postgres" if driver == "postgresql" else "mariadb"
        )

    def prepare(self, rows: list[tuple[str, str, str]]) -> str:
        if self.driver == "postgresql":
            dsn: str = self.server.database("passdb")
            _fill_postgresql(dsn, rows)
            return dsn
        name, dsn = self.server.database("passdb")
        _fill_mariadb(self.server, name, rows)
        return str(dsn)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


def sql_server(
    factory: ServerFactory, request: pytest.FixtureRequest, tmp_path: Path, driver: str
) -> tuple[MailslotServer, Database]:
    database = Database(request, driver)
    dsn = database.prepare(_rows(DEFAULT_USERS))
    sql: dict[str, Any] = {"driver": driver, "password_query": DOVECOT_QUERY}
    env = {}
    if driver == "postgresql":
        # The DSN in a file of its own, as a site keeps the password out of the config.
        dsn_file = tmp_path / "auth-dsn"
        dsn_file.write_text(dsn + "\n")
        dsn_file.chmod(0o600)
        sql["dsn_file"] = str(dsn_file)
    else:
        env["MAILSLOT_AUTH_DSN"] = dsn
    server = factory(
        listeners=(Listener("implicit"),),
        auth={"backend": "sql"},
        extra_sections={"auth.sql": sql},
        env=env,
    )
    return server, database


def attempt(server: MailslotServer, user: str, password: str) -> tuple[bytes, poplib.POP3 | None]:
    client = pop3_connect(server, "implicit")
    client.user(user)
    try:
        return client.pass_(password), client
    except poplib.error_proto as exc:
        client.close()
        return exc.args[0], None


@pytest.mark.parametrize("driver", ["postgresql", "mysql"])
def test_logins_through_the_sql_passdb(
    mailslot_factory: ServerFactory, request: pytest.FixtureRequest, tmp_path: Path, driver: str
) -> None:
    server, _ = sql_server(mailslot_factory, request, tmp_path, driver)
    server.builder("alice").add(b"Subject: sql\r\n\r\nhello\r\n")
    for name in ("alice", "bob", "carol@example.org"):
        reply, client = attempt(server, name, server.password(name))
        assert reply.startswith(b"+OK"), (name, reply)
        assert client is not None
        if name == "alice":
            assert client.stat() == (1, len(b"Subject: sql\r\n\r\nhello\r\n"))
        client.quit()

    wrong, _ = attempt(server, "alice", "not-her-password")
    unknown, _ = attempt(server, "mallory", "not-her-password")
    injected, _ = attempt(server, "x'OR'1'='1", server.password("alice"))
    injected_domain, _ = attempt(server, "alice@x'OR'1'='1", server.password("alice"))
    assert wrong.startswith(b"-ERR [AUTH]")
    assert unknown == wrong == injected == injected_domain
    log = server.log()
    assert "Traceback" not in log
    assert "login: user=alice " in log and "login: user=x" not in log


@pytest.mark.parametrize("driver", ["postgresql", "mysql"])
def test_the_database_stopped_is_a_temporary_failure_until_it_is_back(
    mailslot_factory: ServerFactory, request: pytest.FixtureRequest, tmp_path: Path, driver: str
) -> None:
    server, database = sql_server(mailslot_factory, request, tmp_path, driver)
    reply, client = attempt(server, "bob", server.password("bob"))
    assert reply.startswith(b"+OK") and client is not None
    client.quit()
    database.stop()
    try:
        for name, password in [("bob", server.password("bob")), ("mallory", "x")]:
            reply, _ = attempt(server, name, password)
            assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
    finally:
        database.start()
    reply, client = attempt(server, "bob", server.password("bob"))
    assert reply.startswith(b"+OK"), reply
    assert client is not None
    client.quit()
    log = server.log()
    assert "user database unavailable" in log
    assert "login failed, user database unavailable: user=bob" in log
    assert "Traceback" not in log


def test_no_dsn_anywhere_stops_the_start_with_one_line(mailslot_factory: ServerFactory) -> None:
    server = mailslot_factory(
        start=False,
        listeners=(Listener("implicit"),),
        auth={"backend": "sql"},
        extra_sections={"auth.sql": {"driver": "mysql", "password_query": DOVECOT_QUERY}},
    )
    env = {k: v for k, v in os.environ.items() if k != "MAILSLOT_AUTH_DSN"}
    result = subprocess.run(
        [sys.executable, "-m", "mailslot", "serve", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 78
    assert (
        'cannot start: [auth] backend = "sql" needs [auth.sql] dsn, dsn_file or '
        "$MAILSLOT_AUTH_DSN" in result.stderr
    )
    assert "Traceback" not in result.stderr
