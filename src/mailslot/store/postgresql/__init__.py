"""The PostgreSQL store: many nodes, one mail store (docs/postgresql.md).

:mod:`.store` (the :class:`~mailslot.store.base.Store` backend), :mod:`.lease` (the maildrop
lease across nodes), :mod:`.schema` (versioned migrations in ``migrations/``), :mod:`.queries`.
"""

from mailslot.store.postgresql.store import PostgresMaildrop, PostgresStore

__all__ = ["PostgresMaildrop", "PostgresStore"]
