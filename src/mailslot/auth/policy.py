"""After a right password: may this passwd-file user log in from here?

The passdb restrictions (``allow_nets``, ``allow_real_nets``, ``nologin``, fields mailslot does
not support) are Dovecot's, applied by :func:`mailslot.auth.restrictions.check` as for the
SQL passdb; their replies are described there.  The passwd-file adds one refusal of its
own, after those: ``userdb_mail`` naming a location mailslot cannot serve, answered
``-ERR [SYS/PERM]`` (RFC 3206 section 4) as for any maildrop that cannot be opened.
"""

from __future__ import annotations

from mailslot.auth import restrictions
from mailslot.auth.extrafields import ExtraFields
from mailslot.auth.restrictions import NOLOGIN_TEXT, Refusal

__all__ = ["NOLOGIN_TEXT", "Refusal", "check"]


def check(extra: ExtraFields | None, client: str | None, real: str | None) -> Refusal | None:
    """The refusal for a login from ``client`` over a connection from ``real`` (addresses;
    ``None`` for a Unix socket, matched by ``local``), or ``None`` to let the user in."""
    if extra is None:
        return None
    refusal = restrictions.check(extra.restrictions, client, real)
    if refusal is None and extra.mail_unsupported:
        # The password was right and the reply says so: forgiven, as any maildrop failure is.
        log = "userdb_mail names a location mailslot cannot serve"
        return Refusal("sys-perm", None, log, False, "userdb_mail")
    return refusal
