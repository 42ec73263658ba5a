"""Choosing the store backend from ``[store] backend`` (docs/configuration.md).

The PostgreSQL backend and asyncpg are imported only when configured.  :func:`resolve_dsn`
runs once in the process that starts (it may read a ``dsn_file`` only root may read);
:func:`build` runs in each worker, after any fork, and connects nothing: the pool is made at
the first use.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from mailslot.config import Config, StoreConfig
from mailslot.store.base import Store

if TYPE_CHECKING:
    from mailslot.store.postgresql import PostgresStore

DSN_VARIABLE = "MAILSLOT_DSN"


class DsnMissing(Exception):
    """``[store] backend = "postgresql"`` and no DSN anywhere; the message says where."""


def resolve_dsn(store: StoreConfig) -> str:
    """The DSN from ``dsn``, else ``dsn_file`` (its first line), else ``$MAILSLOT_DSN``."""
    if store.dsn:
        return store.dsn
    if store.dsn_file is not None:
        try:
            text = store.dsn_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DsnMissing(f"[store] dsn_file {store.dsn_file}: cannot read it: {exc}") from exc
        lines = text.strip().splitlines()
        if not lines:
            raise DsnMissing(f"[store] dsn_file {store.dsn_file} is empty")
        return lines[0].strip()
    dsn = os.environ.get(DSN_VARIABLE, "").strip()
    if not dsn:
        raise DsnMissing(
            f'[store] backend = "postgresql" needs dsn, dsn_file or ${DSN_VARIABLE} '
            "(e.g. postgresql://mailslot@db.example/mailslot)"
        )
    return dsn


def uses_database(config: Config) -> bool:
    """Whether the store or the user database is in PostgreSQL."""
    return config.store.backend == "postgresql" or config.auth.backend == "postgresql"


def with_dsn(config: Config) -> Config:
    """``config`` with its PostgreSQL DSN resolved into ``[store] dsn`` (unchanged without
    a database); raises :class:`DsnMissing`."""
    if not uses_database(config):
        return config
    return replace(config, store=replace(config.store, dsn=resolve_dsn(config.store)))


def node_id(config: Config) -> str:
    return config.server.node_id or socket.gethostname()


def postgres_store(config: Config) -> PostgresStore:
    from mailslot.store.postgresql import PostgresStore

    return PostgresStore(
        resolve_dsn(config.store),
        pool_size=config.store.pool_size,
        lease_seconds=config.store.lease_seconds,
        node=node_id(config),
        statement_cache_size=config.store.statement_cache_size,
    )


def build(config: Config) -> Store:
    """The store ``config`` names; nothing is opened or connected yet."""
    if config.store.backend == "postgresql":
        return postgres_store(config)
    from mailslot.store.maildir import MaildirStore

    return MaildirStore(
        config.store.maildir,
        hostname=config.server.hostname,
        snapshot_budget=config.store.snapshot_cache,
    )
