"""Choosing the user database from ``[auth] backend`` (docs/configuration.md).

Every backend sees login names as ``[auth] username_format`` makes them
(:mod:`mailslot.auth.usernameformat`, Dovecot's ``auth_username_format``).
``"passwd-file"`` reads ``[auth] passwd_file`` (one file per domain when it holds
``{domain}``); ``"postgresql"`` reads ``mailslot_users`` in
the database named by ``[store]``'s ``dsn``/``dsn_file``/``$MAILSLOT_DSN``, through the
store's own pool when the store is in PostgreSQL too (one pool per worker, not two);
``"sql"`` runs ``[auth.sql] password_query`` (:mod:`mailslot.auth.sql`);
``"dovecot"`` asks a running Dovecot's auth service (``[auth.dovecot]``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mailslot.auth.base import Authenticator
from mailslot.auth.pool import VerifyPool
from mailslot.config import Config

if TYPE_CHECKING:
    from mailslot.auth.passwdfile import PasswdFileAuthenticator


def with_dsn(config: Config) -> Config:
    """``config`` with ``[auth.sql]``'s DSN resolved into its ``dsn`` (read once, in the
    process that starts, which may be the only one allowed to read ``dsn_file``); raises
    :class:`mailslot.auth.sqlcheck.SqlDsnMissing`."""
    if config.auth.backend != "sql":
        return config
    from mailslot.auth.sqlcheck import resolve_sql_dsn

    sql = replace(config.auth.sql, dsn=resolve_sql_dsn(config.auth.sql), dsn_file=None)
    return replace(config, auth=replace(config.auth, sql=sql))


def build(
    config: Config,
    store: object = None,
    *,
    recheck: float = 0.0,
    pool: VerifyPool | None = None,
) -> Authenticator:
    """The authenticator ``config`` names; nothing is read or connected yet.

    ``recheck``: how often a passwd-file is checked for changes (seconds, 0: every call).
    ``pool``: where slow hashes are checked, fairly between clients (auth.pool).
    """
    from mailslot.auth.usernameformat import NormalisingAuthenticator

    inner = _build(config, store, recheck=recheck, pool=pool)
    return NormalisingAuthenticator(inner, config.auth.username_format)


def _build(
    config: Config, store: object, *, recheck: float, pool: VerifyPool | None
) -> Authenticator:
    floor = config.auth.failure_time_floor
    if config.auth.backend == "sql":
        from mailslot.auth.sql import SqlAuthenticator
        from mailslot.auth.sqlcheck import resolve_sql_dsn
        from mailslot.auth.sqldb import open_database
        from mailslot.auth.sqlquery import compile_query

        sql = config.auth.sql
        if sql.password_query is None:
            raise ValueError("[auth.sql] password_query is required")
        database = open_database(
            sql.driver,
            resolve_sql_dsn(sql),
            size=sql.pool_size,
            connect_timeout=sql.connect_timeout,
            query_timeout=sql.query_timeout,
        )
        return SqlAuthenticator(
            database,
            compile_query(sql.password_query, sql.driver),
            default_pass_scheme=sql.default_pass_scheme.upper(),
            legacy=config.auth.legacy_schemes,
            verify_pool=pool,
            failure_floor=floor,
        )
    if config.auth.backend == "dovecot":
        from mailslot.auth.dovecot import DovecotAuthenticator

        dovecot = config.auth.dovecot
        return DovecotAuthenticator(
            dovecot.socket,
            service=dovecot.service,
            userdb_socket=dovecot.userdb_socket,
            failure_floor=floor,
        )
    if config.auth.backend == "postgresql":
        from mailslot.auth.postgresql import PostgresAuthenticator
        from mailslot.store import backends
        from mailslot.store.postgresql.pool import LazyPool

        lazy = getattr(store, "pool", None)
        if not isinstance(lazy, LazyPool):
            lazy = LazyPool(
                backends.resolve_dsn(config.store),
                size=config.store.pool_size,
                statement_cache_size=config.store.statement_cache_size,
            )
        return PostgresAuthenticator(lazy, verify_pool=pool, failure_floor=floor)
    from mailslot.auth.passwdfile import DomainPasswdFiles

    path = config.auth.passwd_file
    if path is None:
        raise ValueError("[auth] passwd_file is required")

    def make(one: Path) -> PasswdFileAuthenticator:
        return passwd_file(config, one, recheck=recheck, pool=pool)

    if "{domain}" in str(path):
        return DomainPasswdFiles(str(path), make, pool=pool, failure_floor=floor)
    return make(path)


def passwd_file(
    config: Config, path: Path, *, recheck: float = 0.0, pool: VerifyPool | None = None
) -> PasswdFileAuthenticator:
    """The passwd-file at ``path`` read with ``config``'s ``[auth]`` and ``[store]``."""
    from mailslot.auth import schemes
    from mailslot.auth.passwdfile import PasswdFileAuthenticator

    auth = config.auth
    return PasswdFileAuthenticator(
        path,
        legacy={schemes.canonical_legacy(name) or name for name in auth.legacy_schemes},
        username_format=auth.username_format,
        maildir=config.store.maildir if config.store.backend == "maildir" else None,
        recheck=recheck,
        pool=pool,
        failure_floor=auth.failure_time_floor,
    )
