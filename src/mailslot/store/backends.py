"""Choosing the store backend from ``[store] backend`` (docs/configuration.md).

The PostgreSQL backend and asyncpg are imported only when configured.  :func:`resolve_dsn`
runs once in the process that starts (it may read a ``dsn_file`` only root may read);
:func:`build` runs in each worker, after any fork, and connects nothing: the pool is made at
the first use.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from mailslot.config import Config, StoreConfig
from mailslot.store.base import Store

if TYPE_CHECKING:
    from mailslot.store.postgresql import PostgresStore

DSN_VARIABLE = "MAILSLOT_DSN"
EX_CONFIG = 78  # sysexits(3)

logger = logging.getLogger("mailslot")


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
        uidl_format=config.store.uidl_format,
        reuse_xuidl=config.store.reuse_xuidl,
        flag_updates=config.store.flag_updates,
        deleted_flag=config.store.deleted_flag,
        lock_session=config.store.lock_session,
    )


def start(config: Config) -> int:
    """Once per server start, before any worker: with a database, refuse a schema this
    mailslot does not know or a malformed DSN (return 78, ``EX_CONFIG``, after one log line)
    and clear this node's leases of an earlier life.  A database that cannot be reached is
    no reason not to start: logins answer ``[SYS/TEMP]`` until it is back.  0: go on."""
    if not uses_database(config):
        return 0
    import asyncio

    from asyncpg.exceptions import ClientConfigurationError

    from mailslot.log import escape
    from mailslot.store.postgresql.pool import DATABASE_ERRORS
    from mailslot.store.postgresql.schema import SchemaMismatch
    from mailslot.store.postgresql.store import start_node

    node = node_id(config)
    try:
        cleared = asyncio.run(start_node(resolve_dsn(config.store), node))
    except SchemaMismatch as exc:
        logger.error("cannot start: %s", exc)
        return EX_CONFIG
    except (ValueError, ClientConfigurationError) as exc:  # a malformed DSN
        logger.error("cannot start: [store] dsn: %s", escape(exc))
        return EX_CONFIG
    except DATABASE_ERRORS as exc:
        logger.warning(
            "database unavailable at start (%s); serving anyway, logins answer [SYS/TEMP] "
            "until it is back",
            escape(f"{type(exc).__name__}: {exc}"),
        )
        return 0
    logger.info("database: node %s, %d stale leases of this node cleared", node, cleared)
    return 0
