"""The PostgreSQL store's schema: versioned SQL files shipped in ``migrations/``.

``NNNN_name.sql`` brings the schema from version NNNN-1 to NNNN.  :func:`upgrade` (``mailslot
db upgrade``) applies the missing ones in one transaction, serialised against a concurrent
upgrade by a transaction-scoped advisory lock, so running it twice, or on two nodes at once,
is harmless.  :func:`check` tells a server whether it knows the schema it finds: one too old
or too new is refused (docs/postgresql.md), never guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

VERSION_TABLE = "mailslot_schema"
# Any constant: held only for the upgrade's transaction (pg_advisory_xact_lock), never by a
# session, so none of the lease's objections to advisory locks applies.
_UPGRADE_LOCK = 0x6D61696C736C6F74 & 0x7FFFFFFFFFFFFFFF
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with this mailslot, in order."""
    found = []
    for entry in resources.files("mailslot.store.postgresql.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError("the shipped migrations are not numbered 1, 2, ... without gaps")
    return found


def latest() -> int:
    """The schema version this mailslot needs."""
    return len(migrations())


class SchemaMismatch(Exception):
    """The database's schema is not the one this mailslot knows."""

    def __init__(self, found: int, wanted: int) -> None:
        if found < wanted:
            what = "no mailslot schema" if found == 0 else f"schema version {found}"
            advice = "run: mailslot db upgrade --config FILE"
        else:
            what = f"schema version {found}"
            advice = "it was upgraded by a newer mailslot; run that version (or newer)"
        super().__init__(f"the database has {what}, this mailslot needs {wanted}: {advice}")
        self.found = found
        self.wanted = wanted


async def current(connection: Any) -> int:
    """The schema version in the database (0: none), read with asyncpg ``connection``."""
    exists = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", VERSION_TABLE)
    if not exists:
        return 0
    version = await connection.fetchval("SELECT max(version) FROM mailslot_schema")
    return int(version or 0)


async def check(connection: Any) -> None:
    """Raise :class:`SchemaMismatch` unless the database has exactly :func:`latest`."""
    found, wanted = await current(connection), latest()
    if found != wanted:
        raise SchemaMismatch(found, wanted)


async def upgrade(connection: Any, target: int | None = None) -> tuple[int, int]:
    """Apply the missing migrations, up to ``target`` (default: all); return (version
    before, version after)."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _UPGRADE_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS mailslot_schema ("
            "version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"
        )
        before = await current(connection)
        shipped = migrations()
        if before > len(shipped):
            raise SchemaMismatch(before, len(shipped))
        after = len(shipped) if target is None else min(target, len(shipped))
        for migration in shipped[before:after]:
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO mailslot_schema (version) VALUES ($1)", migration.version
            )
    return before, max(before, after)
