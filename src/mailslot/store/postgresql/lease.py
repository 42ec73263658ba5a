"""The maildrop lease: RFC 1939 section 8's exclusive lock, held across nodes.

A row in ``mailslot_leases`` per locked maildrop, with an expiry set by the database's clock
(no node's clock matters) and a fencing token from a sequence.  Taking it is one statement
that succeeds only if no row exists or the row has expired; the holder renews it every third
of its lifetime; a holder that dies or freezes stops renewing, so another session may take it
once it expires.  QUIT's deletion releases the lease in the statement that deletes, and only
if the token is still the session's (:data:`~mailslot.store.postgresql.queries.QUIT_DELETE`):
a frozen holder that wakes up after losing the lease deletes nothing.

Advisory locks would not do: a frozen (SIGSTOPped) holder keeps one forever, each pins a
connection for the whole session, and they do not survive transaction pooling (PgBouncer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from mailslot.store.postgresql import queries

logger = logging.getLogger("mailslot.store")

Connect = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


class Lease:
    """One held lease; :meth:`start` renews it until :meth:`release`."""

    def __init__(self, connect: Connect, account: int, token: int, seconds: float) -> None:
        self._connect = connect
        self.account = account
        self.token = token
        self.seconds = seconds
        self.lost = False
        self.released = False
        self._renewer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.seconds / 3)
            try:
                async with self._connect() as connection:
                    kept = await connection.fetchval(
                        queries.RENEW_LEASE, self.account, self.token, self.seconds
                    )
            except Exception as exc:
                # The lease may yet be renewed in time; if not, QUIT's fence says so.
                logger.warning("cannot renew the lease of account %d: %s", self.account, exc)
                continue
            if kept is None:
                self.lost = True
                logger.warning(
                    "lease of account %d lost (token %d): another session took the maildrop",
                    self.account,
                    self.token,
                )
                return

    async def stop(self) -> None:
        """Stop renewing (before a statement that releases the lease itself)."""
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def release(self) -> None:
        """Stop renewing and give the lease up (best effort: it expires anyway); nothing
        if it was lost or already released (``released``, set by QUIT's deletion)."""
        await self.stop()
        if self.lost or self.released:
            return
        self.released = True
        try:
            async with self._connect() as connection:
                await connection.execute(queries.RELEASE_LEASE, self.account, self.token)
        except Exception as exc:
            logger.warning(
                "cannot release the lease of account %d, it expires in at most %gs: %s",
                self.account,
                self.seconds,
                exc,
            )
