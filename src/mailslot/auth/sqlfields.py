"""The columns of a ``password_query`` row, read as Dovecot's passdb fields.

Dovecot's SQL passdb (doc.dovecot.org, "SQL" and "Password database extra fields") takes
the row's ``password`` (or ``password_noscheme``) column, an optional ``user`` that names
the account canonically, and any other column as an extra field; a NULL column is as if
it were absent.  Here:

- the account: ``password``, ``password_noscheme``, ``user`` (or ``username`` and
  ``domain``, which replace the name's parts before and after the ``@``, as in the query
  of Dovecot's example ``dovecot-sql.conf.ext``) and ``userdb_home`` (the user's home, for
  ``[store] maildir``'s ``{home}``);
- every other column not named ``userdb_...`` is a passdb field, read as the passwd-file's
  are, by :mod:`mailslot.auth.restrictions` (``nologin``, ``reason``, ``allow_nets``,
  ``allow_real_nets``, ``nodelay``; any other one refuses the login, ``proxy``,
  ``proxy_maybe``, ``host`` and ``nopassword`` among them);
- read and not used, said once per column in the log: the other ``userdb_`` columns
  (``userdb_mail``, ``userdb_uid``, ...): mailslot takes the maildrop from ``[store] maildir``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mailslot.auth import restrictions
from mailslot.auth.restrictions import UNRESTRICTED, Restrictions

__all__ = ["PassdbFields", "canonical_name", "client_allowed", "passdb_fields"]

# The account's own columns; every other one but userdb_... is a passdb restriction.
_ACCOUNT = frozenset({"password", "password_noscheme", "user", "username", "domain"})
# An account that lives elsewhere, or needs no password: no user for delivery either.
_ELSEWHERE = ("proxy", "proxy_maybe", "host", "nopassword")


@dataclass(frozen=True, slots=True)
class PassdbFields:
    """What a row says about the account."""

    user: str | None = None
    username: str | None = None  # the part before the @
    domain: str | None = None  # the part after it
    password: str | None = None  # with a {SCHEME} prefix (default_pass_scheme supplied)
    home: str | None = None
    restrictions: Restrictions = UNRESTRICTED
    elsewhere: tuple[str, ...] = ()  # columns of an account mailslot does not serve
    unused: tuple[str, ...] = ()  # columns read and not used

    @property
    def nologin(self) -> bool:
        """``nologin``: the login is refused whatever the password."""
        return self.restrictions.nologin


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def passdb_fields(
    row: Mapping[str, object],
    default_pass_scheme: str = "CRYPT",  # noqa: S107 (a scheme's name)
) -> PassdbFields:
    """Read one row; column names are compared in lower case, NULL columns are absent."""
    fields = {str(k).lower(): _text(v) for k, v in row.items()}
    present = {k: v for k, v in fields.items() if v is not None}
    password = present.get("password")
    if password is not None and password and not password.startswith("{"):
        password = f"{{{default_pass_scheme}}}{password}"
    if password is None and "password_noscheme" in present:
        # Dovecot: the value is never read as {SCHEME}data, only with the default scheme.
        password = f"{{{default_pass_scheme}}}{present['password_noscheme']}"
    found, _ = restrictions.parse(
        [(k, v) for k, v in present.items() if k not in _ACCOUNT and not k.startswith("userdb_")]
    )
    return PassdbFields(
        user=present.get("user") or None,
        username=present.get("username") or None,
        domain=present.get("domain"),
        password=password or None,
        home=present.get("userdb_home") or None,
        restrictions=found,
        elsewhere=tuple(k for k in _ELSEWHERE if k in present),
        unused=tuple(sorted(k for k in present if k.startswith("userdb_") and k != "userdb_home")),
    )


def canonical_name(login: str, fields: PassdbFields) -> str:
    """The account's name: ``user``, else the login name with ``username`` and ``domain``
    put in for its parts (an empty ``domain``: none)."""
    base = fields.user or login
    if fields.username is None and fields.domain is None:
        return base
    local, _, domain = base.partition("@")
    local = fields.username or local
    domain = domain if fields.domain is None else fields.domain
    return f"{local}@{domain}" if domain else local


def client_allowed(client: str | None, networks: tuple[str, ...]) -> bool:
    """Whether ``client`` (an address, or an IPv6 network when the caller counts clients
    per prefix) lies within one of ``networks`` (:func:`mailslot.auth.restrictions.within`);
    an unknown client, or a list with a network that cannot be read, allows nothing."""
    try:
        nets = restrictions.parse_networks(",".join(networks))
    except ValueError:
        return False
    return client is not None and restrictions.within(client, nets)
