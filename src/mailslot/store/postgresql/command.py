"""``mailslot db upgrade|status --config FILE``: the PostgreSQL store's schema (docs/postgresql.md).

``upgrade`` creates the schema in an empty database or applies the migrations it lacks, in one
transaction; running it again, or on two nodes at once, changes nothing.  ``status`` prints the
version found and the one this mailslot needs.  Exit status (sysexits(3)): 0 done (``status``:
the schema is current), 69 the database cannot be reached, 75 (``status``) the schema is older
than this mailslot (run ``upgrade``), 78 a configuration problem or a schema newer than this
mailslot.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from mailslot.config import Config
from mailslot.store import backends
from mailslot.store.postgresql import schema
from mailslot.store.postgresql.pool import DATABASE_ERRORS

EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78


def run(config: Config, action: str) -> int:
    if not backends.uses_database(config):
        print(
            f'mailslot: {config.source}: neither [store] nor [auth] has backend = "postgresql":'
            " there is no database",
            file=sys.stderr,
        )
        return EX_CONFIG
    try:
        dsn = backends.resolve_dsn(config.store)
    except backends.DsnMissing as exc:
        print(f"mailslot: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        return asyncio.run(_upgrade(dsn) if action == "upgrade" else _status(dsn))
    except schema.SchemaMismatch as exc:
        print(f"mailslot: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (ValueError, asyncpg.exceptions.ClientConfigurationError) as exc:
        print(f"mailslot: [store] dsn: {exc}", file=sys.stderr)
        return EX_CONFIG
    except DATABASE_ERRORS as exc:
        print(f"mailslot: cannot use the database: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=10, statement_cache_size=0)


async def _upgrade(dsn: str) -> int:
    connection = await _connect(dsn)
    try:
        before, after = await schema.upgrade(connection)
    finally:
        await connection.close()
    if before == after:
        print(f"schema is at version {after}: nothing to do")
    else:
        print(f"schema upgraded from version {before} to {after}")
    return 0


async def _status(dsn: str) -> int:
    connection = await _connect(dsn)
    try:
        found = await schema.current(connection)
    finally:
        await connection.close()
    wanted = schema.latest()
    print(f"schema version {found}, this mailslot needs {wanted}")
    if found > wanted:
        raise schema.SchemaMismatch(found, wanted)
    return 0 if found == wanted else EX_TEMPFAIL
