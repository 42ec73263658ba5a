"""The local delivery agent shared by LMTP and ``mailslot deliver``.

One recipient at a time: map the address to a user (:mod:`mailslot.delivery.recipient`),
check the quota (:mod:`mailslot.delivery.quota`), prepend the trace fields
(:mod:`mailslot.delivery.message`) and hand the message to :meth:`Store.deliver`, which returns
only once the message is durable (tmp/, fsync, rename into new/, fsync of new/).  The outcome
is a :class:`~mailslot.delivery.status.Status`, never an exception, so LMTP can send exactly one
reply per recipient (RFC 2033 section 4.2) whatever went wrong.

Store failures are deferred, never bounced: a :class:`TemporaryFailure` (disk full, I/O error)
obviously, but also a :class:`PermanentFailure` (a permission or path problem), because it
needs an administrator, and a deferred message is delivered once the problem is fixed while a
bounced one is lost to the recipient.
"""

from __future__ import annotations

import logging

from mailslot.auth.base import Authenticator, AuthError, User
from mailslot.auth.usernames import for_log
from mailslot.config import DeliveryConfig
from mailslot.delivery import quota
from mailslot.delivery.message import trace_fields
from mailslot.delivery.recipient import RecipientRejected, Resolver
from mailslot.delivery.status import DELIVERED, OVER_QUOTA, TEMPORARY, TOO_BIG, Status
from mailslot.store.base import PermanentFailure, Store, StoreError

log = logging.getLogger("mailslot.delivery")


class DeliveryAgent:
    """Delivers messages for addresses of ``users`` into ``store`` under ``config``'s rules.

    ``usage`` counts a maildrop for the quota; by default it is derived from the store
    (:func:`mailslot.delivery.quota.probe_for`).
    """

    def __init__(
        self,
        config: DeliveryConfig,
        store: Store,
        users: Authenticator,
        usage: quota.UsageProbe | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._resolver = Resolver(config, users.lookup)
        self._usage = usage if usage is not None else quota.probe_for(store)
        if quota.enabled(config) and self._usage is None:
            log.warning("quota configured but the store cannot count usage; quota not enforced")

    def too_big(self, size: int) -> bool:
        """Whether a message of ``size`` octets exceeds ``max_message_size`` (0 = no limit)."""
        return 0 < self.config.max_message_size < size

    async def resolve(self, address: str) -> User:
        """The user for ``address``; raises :class:`RecipientRejected` (its status says why)."""
        try:
            return await self._resolver.resolve(address)
        except AuthError as exc:
            # TemporaryAuthFailure above all; an authenticator must not fail lookups otherwise.
            log.warning("user lookup failed for %s: %s", for_log(address), type(exc).__name__)
            raise RecipientRejected(TEMPORARY) from None

    async def deliver(
        self, user: User, body: bytes, *, sender: str | None, recipient: str | None
    ) -> Status:
        """Store ``body`` (LF line ends, no trace fields yet) for ``user``.

        ``sender`` becomes ``Return-Path`` (``""`` is the null sender, None adds none) and
        ``recipient`` becomes ``Delivered-To``, each if the configuration asks for it.
        """
        data = (
            trace_fields(
                sender if self.config.add_return_path else None,
                recipient if self.config.add_delivered_to else None,
            )
            + body
        )
        if self.too_big(len(body)):
            return self._logged(user, TOO_BIG, len(data))
        extra = user.extra
        if extra is not None and extra.mail_unsupported:
            # Deferred, not bounced: the sender retries once the passwd-file is fixed.
            log.error("delivery to %s deferred: its userdb_mail is not served", for_log(user.name))
            return TEMPORARY
        limits = quota.for_user(self.config, extra)
        try:
            if self._usage is not None and quota.enabled(limits):
                usage = await self._usage(user.name, user.home)
                if not quota.fits(usage, len(data), limits):
                    return self._logged(user, OVER_QUOTA, len(data))
            owner = None if extra is None else extra.owner
            key = await self._store.deliver(user.name, data, user.home, owner=owner)
        except PermanentFailure as exc:
            log.error("delivery to %s needs an administrator: %s", for_log(user.name), exc)
            return TEMPORARY
        except (StoreError, OSError) as exc:
            log.warning("delivery to %s deferred: %s", for_log(user.name), exc)
            return TEMPORARY
        except Exception:
            # A bug must still defer this one recipient, never break the other replies.
            log.exception("delivery to %s failed unexpectedly", for_log(user.name))
            return TEMPORARY
        log.info("delivered to %s key=%s size=%d", for_log(user.name), for_log(key), len(data))
        return DELIVERED

    def _logged(self, user: User, status: Status, size: int) -> Status:
        log.info("refused for %s size=%d: %s", for_log(user.name), size, status.reply)
        return status
