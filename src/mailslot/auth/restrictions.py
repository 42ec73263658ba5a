"""Dovecot's passdb restrictions: may a user whose password was right log in from here?

Both user databases that hold Dovecot's passdb extra fields (doc.dovecot.org, "Password
database extra fields") read them here: the passwd-file (:mod:`mailslot.auth.extrafields`,
from a line's eighth field on) and the SQL passdb (:mod:`mailslot.auth.sqlfields`, from the
columns of a ``password_query`` row).  Each backend only turns its line or row into
``(key, value)`` strings; :class:`Reader` makes one :class:`Restrictions` of them and
:func:`check` applies it.  The checks and their replies are those of a Dovecot 2.3 POP3
server, seen on the wire by tests/integration/test_passwd_dovecot.py:

==================  ============================================================================
``allow_nets``      comma- or space-separated networks (CIDR, a bare address, ``local`` for a
                    client without an address) the client must be in; the client's address is
                    the PROXY header's when there is one.  Refused as a wrong password is,
                    ``-ERR [AUTH] Authentication failed.`` (RFC 3206 section 5), so a client
                    elsewhere learns nothing about the password.  Checked before ``nologin``,
                    as Dovecot applies it during the passdb lookup.
``allow_real_nets`` the same for the connecting peer itself (the proxy under PROXY protocol)
``nologin``         refused: ``-ERR [AUTH]`` and ``reason``'s text, else "Login disabled for
                    this user".  Only a client that knew the password sees it.
``reason``          that text (printable, at most 200 characters)
``nodelay``         no failure delay, for a ``nologin`` refusal only (below)
==================  ============================================================================

Any other passdb field is refused as a wrong password is (fail closed): an unknown field may
change who logs in (``proxy``, ``host``, ``nopassword``, ``fail`` ...).  So is a malformed
``allow_nets``: it must not mean "from anywhere".  Problems name fields, never values: a
misplaced column may hold a password.

``nodelay`` is honoured for a ``nologin`` refusal only, never for a wrong password or a
network refusal.  Dovecot skips the failure delay for every failure of such a user, which
lets a guesser try that user's passwords at full speed and tells a network refusal (the
password was right) from a wrong password by the time it takes; here the delay is skipped
only when the reply has already said the password was right.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Literal

__all__ = [
    "NOLOGIN_TEXT",
    "SUPPORTED",
    "UNRESTRICTED",
    "Network",
    "Reader",
    "Refusal",
    "Restrictions",
    "check",
    "field_name",
    "parse",
    "parse_networks",
    "within",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NOLOGIN_TEXT = "Login disabled for this user"
SUPPORTED = frozenset({"nologin", "reason", "allow_nets", "allow_real_nets", "nodelay"})
_LOCAL = "local"
_REASON_MAX = 200
_SEPARATORS = re.compile(r"[,\s]+")


@dataclass(frozen=True, slots=True)
class Restrictions:
    """What a user's passdb fields say about where and whether a right password logs in."""

    nologin: bool = False
    reason: str | None = None
    allow_nets: tuple[Network | str, ...] | None = None  # "local": a Unix-socket client
    allow_real_nets: tuple[Network | str, ...] | None = None
    nodelay: bool = False
    # Fields that refuse the user (unsupported, or a supported one with a bad value).
    refused_by: tuple[str, ...] = ()

    @property
    def restricted(self) -> bool:
        """Whether a right password may still be refused (so timing must hide the outcome)."""
        return bool(
            self.nologin
            or self.allow_nets is not None
            or self.allow_real_nets is not None
            or self.refused_by
        )


UNRESTRICTED = Restrictions()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a user with a right password is refused, and how to answer."""

    kind: Literal["auth", "sys-perm", "referral"]  # referral: Dovecot's nologin with host=
    text: str | None  # the -ERR text; None: the standard one for ``kind``
    log: str  # for the log line, no secrets
    delay: bool  # whether the failure penalty applies; else the address is forgiven
    cause: Literal["fields", "allow_nets", "allow_real_nets", "nologin", "userdb_mail"]


class Reader:
    """Reads passdb fields one at a time, in the order the user database holds them; a
    later field of the same name replaces an earlier one, as in Dovecot."""

    def __init__(self) -> None:
        self._found = UNRESTRICTED
        self._refused: list[str] = []

    def add(self, key: str, value: str | None) -> str | None:
        """Read the field ``key`` (``value`` None: a bare key); the problem with it as a
        sentence naming the field, or None."""
        found = self._found
        # Dovecot treats nologin's and nodelay's presence as set, whatever the value.
        if key == "nologin":
            self._found = replace(found, nologin=True)
        elif key == "nodelay":
            self._found = replace(found, nodelay=True)
        elif key == "reason":
            text = "".join(c if c.isprintable() else "?" for c in (value or ""))[:_REASON_MAX]
            self._found = replace(found, reason=text or None)
        elif key in ("allow_nets", "allow_real_nets"):
            try:
                nets = parse_networks(value or "")
            except ValueError:
                self._refused.append(key)
                return f"passdb field {key} is not a list of networks: the user is refused"
            if key == "allow_nets":
                self._found = replace(found, allow_nets=nets)
            else:
                self._found = replace(found, allow_real_nets=nets)
        else:
            shown = field_name(key)
            self._refused.append(shown)
            return f"passdb field {shown} is not supported by mailslot: the user is refused"
        return None

    def result(self) -> Restrictions:
        """The restrictions of the fields read so far."""
        return replace(self._found, refused_by=tuple(self._refused))


def parse(fields: list[tuple[str, str | None]]) -> tuple[Restrictions, tuple[str, ...]]:
    """The restrictions of ``(key, value)`` passdb fields, and their problems in order."""
    reader = Reader()
    problems = [p for key, value in fields if (p := reader.add(key, value)) is not None]
    return reader.result(), tuple(problems)


def field_name(key: str) -> str:
    """A field's name as logs show it: 64 characters at most, odd ones as ``?``."""
    return re.sub(r"[^A-Za-z0-9_./-]", "?", key[:64]) or "(empty)"


def parse_networks(value: str) -> tuple[Network | str, ...]:
    """Dovecot's ``allow_nets`` list: networks or addresses, or ``local``, separated by
    commas or spaces.  Raises ValueError for an empty list or any malformed item."""
    items = [item for item in _SEPARATORS.split(value) if item]
    if not items:
        raise ValueError("empty network list")
    nets: list[Network | str] = []
    for item in items:
        if item == _LOCAL:
            nets.append(_LOCAL)
        else:
            nets.append(ipaddress.ip_network(item, strict=False))
    return tuple(nets)


def check(found: Restrictions | None, client: str | None, real: str | None) -> Refusal | None:
    """The refusal for a login from ``client`` over a connection from ``real`` (addresses;
    ``None`` for a Unix socket, matched by ``local``), or ``None`` to let the user in."""
    if found is None:
        return None
    if found.refused_by:
        fields = ",".join(found.refused_by)
        log = f"unsupported or invalid passdb field {fields}"
        return Refusal("auth", None, log, True, "fields")
    if found.allow_nets is not None and not within(client, found.allow_nets):
        return Refusal("auth", None, "allow_nets check failed", True, "allow_nets")
    if found.allow_real_nets is not None and not within(real, found.allow_real_nets):
        return Refusal("auth", None, "allow_real_nets check failed", True, "allow_real_nets")
    if found.nologin:
        text = found.reason or NOLOGIN_TEXT
        return Refusal("auth", text, "nologin", not found.nodelay, "nologin")
    return None


def within(address: str | None, nets: tuple[Network | str, ...]) -> bool:
    """Whether ``address`` (or a network, when a caller keys clients by their IPv6 prefix)
    lies within one of ``nets``; ``None`` is a client without an address (``local``)."""
    if address is None:
        return _LOCAL in nets
    try:
        where = ipaddress.ip_network(address.partition("%")[0], strict=False)
    except ValueError:
        return False
    mapped = getattr(where.network_address, "ipv4_mapped", None)
    if mapped is not None and where.prefixlen == 128:
        where = ipaddress.ip_network(mapped)
    if isinstance(where, ipaddress.IPv4Network):
        return any(isinstance(net, ipaddress.IPv4Network) and where.subnet_of(net) for net in nets)
    return any(isinstance(net, ipaddress.IPv6Network) and where.subnet_of(net) for net in nets)
