"""``[auth.sql]`` checked without a database (``mailslot check-config`` and every start),
and its DSN found: ``dsn``, else ``dsn_file``'s first line, else ``$MAILSLOT_AUTH_DSN``.

Imported by :mod:`mailslot.config`, so it imports no driver.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mailslot.auth import schemes
from mailslot.auth.sqldb import DatabaseUnavailable, DsnError, connect_arguments, open_database
from mailslot.auth.sqlquery import QueryError, compile_query

if TYPE_CHECKING:
    from mailslot.config import SqlAuthConfig

__all__ = ["DSN_VARIABLE", "SqlDsnMissing", "check_sql_config", "probe", "resolve_sql_dsn"]

DSN_VARIABLE = "MAILSLOT_AUTH_DSN"
# Whom `check-config --connect` asks for: a name in the reserved .invalid domain (RFC 2606).
PROBE_USER = "mailslot-check-config@example.invalid"


class SqlDsnMissing(Exception):
    """No DSN anywhere, or an unreadable ``dsn_file``; the message says where to put one."""


def check_sql_config(sql: SqlAuthConfig, *, check_files: bool = True) -> list[tuple[str, str]]:
    """Every problem as ``(key, message)``; empty when the table is usable."""
    problems: list[tuple[str, str]] = []
    if sql.password_query is not None:
        try:
            compile_query(sql.password_query, sql.driver)
        except QueryError as exc:
            problems.append(("password_query", f"{exc} (Dovecot's password_query syntax)"))
    if sql.dsn is not None and sql.dsn_file is not None:
        problems.append(("dsn_file", "give dsn or dsn_file, not both"))
    elif sql.dsn is not None:
        try:
            connect_arguments(sql.driver, sql.dsn)
        except DsnError as exc:
            problems.append(("dsn", f"{exc} (a {sql.driver} URI or Dovecot's connect string)"))
    elif sql.dsn_file is not None and check_files:
        try:
            connect_arguments(sql.driver, _first_line(sql.dsn_file))
        except SqlDsnMissing as exc:
            problems.append(("dsn_file", str(exc)))
        except DsnError as exc:
            problems.append(("dsn_file", f"{sql.dsn_file}: the DSN {exc}"))
    scheme = sql.default_pass_scheme.upper()
    if scheme != "CRYPT" and schemes.identify(f"{{{scheme}}}", allow_md5=True) is None:
        problems.append(
            (
                "default_pass_scheme",
                f'"{sql.default_pass_scheme}" is not a scheme mailslot verifies (e.g. CRYPT, '
                "SHA512-CRYPT, BLF-CRYPT, ARGON2ID, SSHA256, PLAIN)",
            )
        )
    if sql.pool_size < 1:
        problems.append(("pool_size", f"must be 1 or more, not {sql.pool_size}"))
    for key in ("connect_timeout", "query_timeout"):
        if getattr(sql, key) <= 0:
            problems.append((key, f"must be more than 0 seconds, not {getattr(sql, key):g}"))
    return problems


def _first_line(path: os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SqlDsnMissing(f"cannot read {os.fspath(path)}: {reason}") from None
    lines = text.strip().splitlines()
    if not lines:
        raise SqlDsnMissing(f"{os.fspath(path)} is empty")
    return lines[0].strip()


def resolve_sql_dsn(sql: SqlAuthConfig) -> str:
    """The DSN; raises :class:`SqlDsnMissing`."""
    if sql.dsn:
        return sql.dsn
    if sql.dsn_file is not None:
        try:
            return _first_line(sql.dsn_file)
        except SqlDsnMissing as exc:
            raise SqlDsnMissing(f"[auth.sql] dsn_file: {exc}") from None
    dsn = os.environ.get(DSN_VARIABLE, "").strip()
    if not dsn:
        raise SqlDsnMissing(
            f'[auth] backend = "sql" needs [auth.sql] dsn, dsn_file or ${DSN_VARIABLE} '
            "(e.g. postgresql://mailslot@db.example/mail)"
        )
    return dsn


async def probe(sql: SqlAuthConfig) -> list[tuple[str, str]]:
    """Connect and run ``password_query`` once for :data:`PROBE_USER`: problems as
    ``(key, message)`` (the DSN, the query's SQL, a missing ``password`` column)."""
    try:
        dsn = resolve_sql_dsn(sql)
    except SqlDsnMissing as exc:
        return [("dsn", str(exc))]
    assert sql.password_query is not None
    query = compile_query(sql.password_query, sql.driver)
    database = open_database(
        sql.driver,
        dsn,
        size=1,
        connect_timeout=sql.connect_timeout,
        query_timeout=sql.query_timeout,
    )
    try:
        names = await database.columns(query, query.parameters(PROBE_USER))
    except DatabaseUnavailable as exc:
        if exc.connecting:
            return [("dsn", f"cannot connect to the {sql.driver} database: {exc}")]
        return [("password_query", f"the database refused it: {exc}")]
    finally:
        await database.aclose()
    if not {name.lower() for name in names} & {"password", "password_noscheme"}:
        returned = ", ".join(names) or "no columns"
        return [
            (
                "password_query",
                f"returns no password column (it returns {returned}); name the hash's "
                "column with AS password",
            )
        ]
    return []
