"""``mailslot migrate``: Maildirs and a passwd-file into the PostgreSQL store (docs/postgresql.md).

:mod:`.source` (the users and maildrops to move), :mod:`.copy` (one account at a time,
resumable, under a hold that defers its deliveries), :mod:`.verify` (RFC 1939 STAT, LIST and
UIDL and every message's bytes, compared), :mod:`.progress` (the line on stderr),
:mod:`.command` (the CLI).
"""
