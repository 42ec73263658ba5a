"""The authentication interface used by USER/PASS (RFC 1939 section 7) and SASL (RFC 5034).

Backends raise only the errors defined here. :class:`AuthenticationFailed` is the one reply for an
unknown user, a wrong password and an invalid user name alike (answered ``-ERR [AUTH]``, RFC 3206
section 5); a backend must spend the same time on each (it verifies against a dummy hash when
the user does not exist).  :class:`TemporaryAuthFailure` (the database is unreachable) is
answered ``-ERR [SYS/TEMP]`` (RFC 3206 section 4).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from mailslot.auth.extrafields import ExtraFields
from mailslot.auth.restrictions import Refusal


class AuthError(Exception):
    """Base class of every error an authentication backend raises."""


class AuthenticationFailed(AuthError):
    """Unknown user, wrong password or invalid user name: deliberately indistinguishable."""


class Refused(AuthenticationFailed):
    """A right password, refused by the account's passdb restrictions
    (:mod:`mailslot.auth.restrictions`): the session answers as ``refusal`` says (a
    ``nologin`` reply names the refusal; every other one is a wrong password's)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__()
        self.refusal = refusal


class TemporaryAuthFailure(AuthError):
    """The user database could not be consulted (RFC 3206 ``[SYS/TEMP]``)."""


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated user: the canonical name and the passwd-file's optional home.

    ``extra``: the user database's Dovecot extra fields (:mod:`mailslot.auth.extrafields`),
    checked by the session with :func:`mailslot.auth.policy.check`.  ``legacy_scheme``: the
    password matched a hash of that ``[auth] legacy_schemes`` scheme (worth a rehash).
    """

    name: str
    home: str | None = None
    extra: ExtraFields | None = field(default=None, compare=False)
    legacy_scheme: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class LoginSource:
    """Where a login comes from, for backends that pass it on (Dovecot's ``rip``/``lip``).

    ``remote`` and ``local`` are (address, port) pairs; ``secured``: the session runs over TLS.
    ``real``: the connecting peer's address (under the PROXY protocol the proxy, not the
    client; ``None`` for a Unix socket), for ``allow_real_nets``.
    """

    remote: tuple[str, int] | None = None
    local: tuple[str, int] | None = None
    secured: bool = False
    real: str | None = None


login_source: ContextVar[LoginSource | None] = ContextVar("mailslot_login_source", default=None)
"""Set by the session for :meth:`Authenticator.authenticate` of a backend whose
``uses_login_source`` attribute is true (:mod:`mailslot.auth.dovecot`, which sends it to
Dovecot; :mod:`mailslot.auth.sql`, which checks ``allow_nets`` against it): the session then
runs the check as a task in a context of its own.  A context variable rather than an argument
keeps the Protocol unchanged for the other backends."""


class Authenticator(Protocol):
    """Verifies a user name and password."""

    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        """Return the user if ``password`` is right, else raise :class:`AuthenticationFailed`.

        ``username`` is untrusted client input: backends validate it with
        :func:`mailslot.auth.usernames.validate` before it reaches a path, query or log line.
        ``client`` names who asks (the session passes its address, an IPv6 one as its
        network): slow checks are shared fairly between clients and a client with too many
        waiting is failed without a check (:mod:`mailslot.auth.pool`).  ``None``: unknown.
        A failure is raised no earlier than the backend's failure floor after the call began
        (:mod:`mailslot.auth.verification`), whoever the user and whatever their scheme.
        """
        ...

    async def lookup(self, username: str) -> User | None:
        """Return the user without checking a password (for delivery), or ``None``."""
        ...
