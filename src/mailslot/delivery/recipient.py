"""From an envelope recipient address to a mailslot user name.

RFC 5321 section 2.3.11 treats the local part as the mailbox name and section 2.4 makes only the
domain case-insensitive; section 4.1.1.3 lets a server accept ``<Postmaster>`` without a domain.
``[delivery] recipient`` chooses the rule (docs/delivery.md):

* ``"localpart"``: the user is the part before the last ``@``.  With ``domains`` set, the
  domain must be one of them (compared case-insensitively); an address without a domain is
  accepted.  Without ``domains``, every domain is accepted.
* ``"address"``: the user is the whole address, with its domain lowercased.

The candidate name is checked with :func:`mailslot.auth.usernames.validate` before it reaches
the user database.  If no user has the exact name, the all-lowercase name is tried once, since
MTAs pass the local part as the sender typed it (``Demo@`` for ``demo``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mailslot.auth.base import User
from mailslot.auth.usernames import InvalidUsername, validate
from mailslot.config import DeliveryConfig
from mailslot.delivery.status import NO_SUCH_USER, NOT_LOCAL_DOMAIN, Status

Lookup = Callable[[str], Awaitable[User | None]]


class RecipientRejected(Exception):
    """The address does not map to a local user; ``status`` says why."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.text)
        self.status = status


def candidates(address: str, config: DeliveryConfig) -> list[str]:
    """The user names to look up for ``address``, best first.

    Raises :class:`RecipientRejected` when the domain is not ours or no candidate is a valid
    user name.
    """
    localpart, at, domain = address.rpartition("@")
    if not at:
        localpart, domain = address, ""
    domain = domain.lower()
    if config.recipient == "localpart":
        if domain and config.domains and domain not in _lowered(config.domains):
            raise RecipientRejected(NOT_LOCAL_DOMAIN)
        names = [localpart, localpart.lower()]
    else:
        names = [f"{localpart}@{domain}", f"{localpart.lower()}@{domain}"] if domain else []
    valid: list[str] = []
    for name in names:
        try:
            validate(name)
        except InvalidUsername:
            continue
        if name not in valid:
            valid.append(name)
    if not valid:
        raise RecipientRejected(NO_SUCH_USER)
    return valid


def _lowered(domains: tuple[str, ...]) -> frozenset[str]:
    return frozenset(d.lower() for d in domains)


class Resolver:
    """Maps addresses to users with an :class:`~mailslot.auth.base.Authenticator`."""

    def __init__(self, config: DeliveryConfig, lookup: Lookup) -> None:
        self._config = config
        self._lookup = lookup

    async def resolve(self, address: str) -> User:
        """Return the user ``address`` is delivered to, or raise :class:`RecipientRejected`.

        :class:`mailslot.auth.base.TemporaryAuthFailure` from the user database passes through:
        the caller answers it with a temporary failure.
        """
        for name in candidates(address, self._config):
            user = await self._lookup(name)
            if user is not None:
                return user
        raise RecipientRejected(NO_SUCH_USER)
