"""After a right password: may this user log in from here?  Dovecot's passdb restrictions.

The checks and their replies are those of a Dovecot 2.3 POP3 server, seen on the wire by
tests/integration/test_passwd_extra_fields.py:

- ``allow_nets`` (the client's address, from the PROXY header when there is one) and
  ``allow_real_nets`` (the connecting peer itself): refused as a wrong password is,
  ``-ERR [AUTH] Authentication failed.`` (RFC 3206 section 5), so a client elsewhere learns
  nothing about the password.  Checked first, as Dovecot applies them before ``nologin``.
- ``nologin``: ``-ERR [AUTH] `` and ``reason=``'s text, else "Login disabled for this user".
  Only a client that knew the password sees it.
- a passdb field mailslot does not support: refused as a wrong password (fail closed), with a
  log line naming the field (:mod:`mailslot.auth.extrafields`).
- ``userdb_mail`` naming a location mailslot cannot serve: ``-ERR [SYS/PERM]`` (RFC 3206
  section 4), as for any maildrop that cannot be opened.

``nodelay`` is honoured for a ``nologin`` refusal only, never for a wrong password or a
network refusal.  Dovecot skips the failure delay for every failure of such a user, which
lets a guesser try that user's passwords at full speed and tells a network refusal (the
password was right) from a wrong password by the time it takes; here the delay is skipped
only when the reply has already said the password was right.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from mailslot.auth.extrafields import ExtraFields, Network

__all__ = ["NOLOGIN_TEXT", "Refusal", "check"]

NOLOGIN_TEXT = "Login disabled for this user"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a user with a right password is refused, and how to answer."""

    kind: Literal["auth", "sys-perm"]
    text: str | None  # the -ERR text; None: the standard one for ``kind``
    log: str  # for the log line, no secrets
    delay: bool  # whether the failure penalty applies; else the address is forgiven


def check(extra: ExtraFields | None, client: str | None, real: str | None) -> Refusal | None:
    """The refusal for a login from ``client`` over a connection from ``real`` (addresses;
    ``None`` for a Unix socket, matched by ``local``), or ``None`` to let the user in."""
    if extra is None:
        return None
    if extra.refused_by:
        fields = ",".join(extra.refused_by)
        return Refusal("auth", None, f"unsupported or invalid passdb field {fields}", True)
    if extra.allow_nets is not None and not _within(client, extra.allow_nets):
        return Refusal("auth", None, "allow_nets check failed", True)
    if extra.allow_real_nets is not None and not _within(real, extra.allow_real_nets):
        return Refusal("auth", None, "allow_real_nets check failed", True)
    if extra.nologin:
        return Refusal("auth", extra.reason or NOLOGIN_TEXT, "nologin", not extra.nodelay)
    if extra.mail_unsupported:
        # The password was right and the reply says so: forgiven, as any maildrop failure is.
        return Refusal(
            "sys-perm", None, "userdb_mail names a location mailslot cannot serve", False
        )
    return None


def _within(address: str | None, nets: tuple[Network | str, ...]) -> bool:
    if address is None:
        return "local" in nets
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(not isinstance(net, str) and ip in net for net in nets)
