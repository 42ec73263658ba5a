"""The PostgreSQL store: many nodes, one mail store (docs/postgresql.md).

:mod:`.store` (the :class:`~mailslot.store.base.Store` backend), :mod:`.lease` (the maildrop
lease across nodes), :mod:`.schema` (versioned migrations in ``migrations/``), :mod:`.queries`,
:mod:`.bodies` (a body written by COPY as its chunks come, for ``mailslot migrate``).
"""

from mailslot.store.postgresql.store import PostgresMaildrop, PostgresStore

__all__ = ["PostgresMaildrop", "PostgresStore"]
