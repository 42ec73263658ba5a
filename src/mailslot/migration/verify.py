"""``mailslot migrate --verify``: the old and the new maildrop, as clients see them, compared.

Both sides are opened through their :class:`~mailslot.store.base.Store` (as a login opens
them) and compared as RFC 1939 reports them: STAT (count and octets, section 5), LIST (each
message's size, in order), UIDL (each unique-id, in order, section 7), and each message's
bytes (a SHA-256 of what ``read`` yields on either side, hashed chunk by chunk: no message
is held whole).  Every difference is a line of the report; none may be hidden by another.
"""

from __future__ import annotations

import hashlib
from typing import Any

from mailslot.migration.copy import USER_ROW
from mailslot.store.base import MaildropLocked, Store, StoreError
from mailslot.store.postgresql import PostgresStore, queries
from mailslot.store.postgresql.store import DB_CHUNK

DIGESTS = "SELECT seq, sha256(body) FROM mailslot_bodies WHERE account_id = $1"

# Lines per user and per kind: enough to see what is wrong without flooding the report.
SHOWN = 5


async def _digest(maildrop: Any, message: Any) -> str:
    digest = hashlib.sha256()
    async for chunk in maildrop.read(message, DB_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


async def compare_maildrops(
    old: Any, new: Any, new_digests: dict[str, str] | None = None
) -> list[str]:
    """Every way ``new`` differs from ``old`` (two open maildrops), as report lines.

    ``new_digests``: the SHA-256 of each of ``new``'s messages by key, if known already (the
    database computes them in one query; else each message is read)."""
    problems: list[str] = []
    a, b = list(old.messages), list(new.messages)
    stat_a, stat_b = (len(a), sum(m.size for m in a)), (len(b), sum(m.size for m in b))
    if stat_a != stat_b:
        problems.append(
            f"STAT: Maildir {stat_a[0]} {stat_a[1]}, PostgreSQL {stat_b[0]} {stat_b[1]}"
        )
    for kind, field in (("UIDL", "uid"), ("LIST", "size")):
        shown = 0
        for number in range(1, max(len(a), len(b)) + 1):
            left = getattr(a[number - 1], field) if number <= len(a) else "(none)"
            right = getattr(b[number - 1], field) if number <= len(b) else "(none)"
            if left != right:
                shown += 1
                if shown <= SHOWN:
                    problems.append(f"{kind} {number}: Maildir {left}, PostgreSQL {right}")
        if shown > SHOWN:
            problems.append(f"{kind}: {shown - SHOWN} more differences")
    by_uid = {m.uid: m for m in b}
    shown = 0
    for number, message in enumerate(a, 1):
        other = by_uid.get(message.uid)
        if other is None:
            continue
        theirs = None if new_digests is None else new_digests.get(other.key)
        if theirs is None:
            theirs = await _digest(new, other)
        if await _digest(old, message) != theirs:
            shown += 1
            if shown <= SHOWN:
                problems.append(f"message {number} (UIDL {message.uid}): the bytes differ")
    if shown > SHOWN:
        problems.append(f"bytes: {shown - SHOWN} more messages differ")
    return problems


async def verify_user(
    name: str,
    home: str | None,
    maildirs: Store,
    database: PostgresStore,
    password: str | None = None,
) -> list[str]:
    """Report lines for ``name`` (empty: identical).  ``password``: the passwd-file's stored
    hash, to be found in ``mailslot_users`` too (None: users are not compared)."""
    problems: list[str] = []
    async with database.connection() as connection:
        account = await connection.fetchval(queries.ACCOUNT, name)
        row = await connection.fetchrow(USER_ROW, name) if password is not None else None
    if password is not None and (row is None or (row[0], row[1]) != (password, home)):
        problems.append(
            "user: not in mailslot_users"
            if row is None
            else "user: mailslot_users has another password or home"
        )
    if account is None:
        return [*problems, "maildrop: not in the database"]
    try:
        old = await maildirs.open(name, home)
    except MaildropLocked:
        return [*problems, "not compared: a POP3 session holds its Maildir"]
    except StoreError as exc:
        return [*problems, f"not compared: its Maildir: {exc}"]
    try:
        try:
            new = await database.open(name, home)
        except MaildropLocked:
            return [
                *problems,
                "not compared: held in the database (a session, or an unfinished migration)",
            ]
        try:
            # What RETR streams is the stored body (substring() of it): its digest computed
            # by the database is the digest of what a client gets, without 100,000 queries.
            async with database.connection() as connection:
                rows = await connection.fetch(DIGESTS, account)
            digests = {f"{account}/{seq}": bytes(digest).hex() for seq, digest in rows}
            problems += await compare_maildrops(old, new, digests)
        finally:
            await new.close()
    finally:
        await old.close()
    return problems
