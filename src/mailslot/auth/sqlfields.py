"""The columns of a ``password_query`` row, read as Dovecot's passdb fields.

Dovecot's SQL passdb (doc.dovecot.org, "SQL" and "Password database extra fields") takes
the row's ``password`` (or ``password_noscheme``) column, an optional ``user`` that names
the account canonically, and any other column as an extra field; a NULL column is as if
it were absent.  Here:

- honoured: ``password``, ``password_noscheme``, ``user`` (or ``username`` and
  ``domain``, which replace the name's parts before and after the ``@``, as in the query
  of Dovecot's example ``dovecot-sql.conf.ext``), ``userdb_home`` (the user's
  home, for ``[store] maildir``'s ``{home}``), ``nologin`` (the login is refused whatever
  the password; ``reason`` is logged with it) and ``allow_nets`` (the client must be in
  one of these comma-separated networks, else the login is refused);
- refused, the login with them: ``proxy``, ``proxy_maybe``, ``host`` (the account lives on
  another server, which mailslot does not proxy to) and ``nopassword`` (mailslot checks
  every password);
- read and not used, said once per column in the log: every other column (``userdb_mail``,
  ``userdb_uid``, ``nodelay``, ...): mailslot takes the maildrop from ``[store] maildir``.

This is the SQL passdb's own reading; the passwd-file's extra fields (parsed from text)
may share it later, as both follow the same Dovecot list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PassdbFields", "canonical_name", "client_allowed", "passdb_fields"]

_REFUSED = ("proxy", "proxy_maybe", "host", "nopassword")
_HONOURED = frozenset(
    {
        "password",
        "password_noscheme",
        "user",
        "username",
        "domain",
        "userdb_home",
        "nologin",
        "reason",
        "allow_nets",
    }
)


@dataclass(frozen=True, slots=True)
class PassdbFields:
    """What a row says about the account."""

    user: str | None = None
    username: str | None = None  # the part before the @
    domain: str | None = None  # the part after it
    password: str | None = None  # with a {SCHEME} prefix (default_pass_scheme supplied)
    home: str | None = None
    nologin: bool = False
    reason: str | None = None
    allow_nets: tuple[str, ...] | None = None
    refused: tuple[str, ...] = ()  # columns that refuse the login
    unused: tuple[str, ...] = ()  # columns read and not used


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
    nets = present.get("allow_nets")
    return PassdbFields(
        user=present.get("user") or None,
        username=present.get("username") or None,
        domain=present.get("domain"),
        password=password or None,
        home=present.get("userdb_home") or None,
        nologin="nologin" in present,
        reason=present.get("reason"),
        allow_nets=None if nets is None else tuple(nets.replace(",", " ").split()),
        refused=tuple(k for k in _REFUSED if k in present),
        unused=tuple(sorted(k for k in present if k not in _HONOURED and k not in _REFUSED)),
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
    """Whether ``client`` (an address, or an IPv6 network when the session counts clients
    per prefix) lies within one of ``networks``; an unknown client or a network that
    cannot be read allows nothing."""
    if client is None:
        return False
    try:
        where = ipaddress.ip_network(client, strict=False)
    except ValueError:
        return False
    for text in networks:
        try:
            network = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            continue
        if network.version == where.version and where.subnet_of(network):  # type: ignore[arg-type]
            return True
    return False
