"""Choosing the user database from ``[auth] backend`` (docs/configuration.md).

Every backend sees login names as ``[auth] username_format`` makes them
(:mod:`mailslot.auth.usernameformat`, Dovecot's ``auth_username_format``).
``"passwd-file"`` reads ``[auth] passwd_file`` (one file per domain when it holds
``{domain}``); ``"postgresql"`` reads ``mailslot_users`` in
the database named by ``[store]``'s ``dsn``/``dsn_file``/``$MAILSLOT_DSN``, through the
store's own pool when the store is in PostgreSQL too (one pool per worker, not two).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mailslot.auth.base import Authenticator
from mailslot.auth.pool import VerifyPool
from mailslot.config import Config

if TYPE_CHECKING:
    from mailslot.auth.passwdfile import PasswdFileAuthenticator


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
