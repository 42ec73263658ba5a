"""Dovecot passwd-file extra fields: who may log in from where, and where the mail lives.

Dovecot's passwd-file (https://doc.dovecot.org/, "Passwd-file") gives fields 3 to 7 (uid, gid,
gecos, home, shell) to the userdb and reads the rest of the line, from field 8 on, as extra
fields: space-separated ``key=value`` or bare ``key``, where a ``userdb_`` prefix makes a userdb
field and anything else is a passdb field ("Passdb extra fields", "Userdb extra fields").  There
is no quoting: a value never holds a space (``reason=Account\\ moved`` is ``Account\\``).

Supported here, with Dovecot's meaning (the passdb fields ``nologin``, ``reason``,
``allow_nets``, ``allow_real_nets`` and ``nodelay`` are read by :mod:`.restrictions`, as the
SQL passdb's columns are):

==================  ============================================================================
``userdb_home``     the home directory (``{home}`` and ``~/`` of ``[store] maildir``)
``userdb_mail``     ``maildir:PATH`` that must name the same place as ``[store] maildir``
``userdb_uid/gid``  (and fields 3/4) the mail owner, names or numbers
``userdb_quota_rule``  ``*:storage=SIZE``, ``*:bytes=SIZE``, ``*:messages=N`` for delivery
==================  ============================================================================

Everything else is *unsupported* and reported once when the file is read, never silently
dropped: an unknown passdb field may change who logs in (``proxy``, ``host``, ``nopassword``
...), so its user is refused (fail closed); an unknown userdb field only concerns a Dovecot
feature mailslot does not have (``userdb_acl_groups``, ``userdb_namespace/...``), so it is
reported and has no effect.  An invalid value of a supported restriction (a malformed
``allow_nets``) refuses the user as well: it must not mean "from anywhere".

Problem texts name fields, never values: a misplaced column may hold a password.
"""

from __future__ import annotations

import functools
import grp
import pwd
import re
from dataclasses import dataclass, field, replace

from mailslot.auth import restrictions
from mailslot.auth.restrictions import (
    UNRESTRICTED,
    Network,
    Restrictions,
    field_name,
    parse_networks,
)

__all__ = ["ExtraFields", "Network", "parse", "parse_networks", "parse_quota_rule"]

_USERDB = frozenset({"home", "mail", "uid", "gid", "quota_rule"})
# Dovecot fields that only describe: accepted and harmless.
_HARMLESS = frozenset({"userdb_system_groups_user", "userdb_gecos", "userdb_shell"})
_SIZE = re.compile(r"(\d+)([bkmgt]?)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True, slots=True)
class ExtraFields:
    """What one passwd-file line says beyond its name and password."""

    restrictions: Restrictions = UNRESTRICTED  # the passdb fields
    home: str | None = None
    mail: str | None = None  # a [store] maildir template ({user} ... ~/), None: the default
    mail_unsupported: bool = False  # userdb_mail names what mailslot cannot serve
    uid: int | None = None
    gid: int | None = None
    quota_bytes: int | None = None
    quota_messages: int | None = None
    # Every problem, one sentence each, for the load-time log and check-config.
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) for the files created for this user as root (-1: not given), or None."""
        if self.uid is None and self.gid is None:
            return None
        return (-1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid)

    @property
    def restricted(self) -> bool:
        """Whether a right password may still be refused (so timing must hide the outcome)."""
        return self.restrictions.restricted

    @property
    def nologin(self) -> bool:
        """``nologin``: refused after a right password."""
        return self.restrictions.nologin

    @property
    def reason(self) -> str | None:
        """``reason``: the text of a ``nologin`` refusal."""
        return self.restrictions.reason

    @property
    def allow_nets(self) -> tuple[Network | str, ...] | None:
        """``allow_nets``: where the client must be, or None (anywhere)."""
        return self.restrictions.allow_nets

    @property
    def allow_real_nets(self) -> tuple[Network | str, ...] | None:
        """``allow_real_nets``: where the connecting peer must be, or None (anywhere)."""
        return self.restrictions.allow_real_nets

    @property
    def nodelay(self) -> bool:
        """``nodelay``: no failure delay for a ``nologin`` refusal."""
        return self.restrictions.nodelay

    @property
    def refused_by(self) -> tuple[str, ...]:
        """Passdb fields that refuse the user (unknown, or a supported one with a bad value)."""
        return self.restrictions.refused_by


def parse(fields: list[str]) -> ExtraFields:
    """Read a passwd-file line's fields (split at ``:``), the name and password included.

    ``home`` is ``userdb_home``, else field 6.
    """
    count = len(fields)
    found = parse_fields(
        fields[2] if count > 2 else "",
        fields[3] if count > 3 else "",
        ":".join(fields[7:]) if count > 7 else "",
    )
    if found.home is None and count > 5 and fields[5]:
        return replace(found, home=fields[5])
    return found


@functools.lru_cache(maxsize=4096)
def parse_fields(uid: str, gid: str, extra: str) -> ExtraFields:
    """The fields of a line from its uid, gid and extra fields (``home`` only from
    ``userdb_home``).  Cached: most lines of a file share them (vmail:vmail, no extras)."""
    values: dict[str, object] = {}
    problems: list[str] = []
    passdb = restrictions.Reader()
    for key, index, value in (("uid", 2, uid), ("gid", 3, gid)):
        if value:
            _set_id(values, key, value, problems, f"field {index + 1} ({key})")
    for token in extra.split():
        key, has_value, value = token.partition("=")
        if key.startswith("userdb_"):
            _userdb(values, key, key.removeprefix("userdb_"), value, problems)
        elif (problem := passdb.add(key, value if has_value else None)) is not None:
            problems.append(problem)
    return ExtraFields(**values, restrictions=passdb.result(), problems=tuple(problems))  # type: ignore[arg-type]


def _userdb(
    values: dict[str, object], key: str, name: str, value: str, problems: list[str]
) -> None:
    if key in _HARMLESS:
        return
    if name not in _USERDB:
        problems.append(f"userdb field {field_name(key)} is not supported by mailslot: ignored")
    elif name == "home":
        values["home"] = value or None
    elif name in ("uid", "gid"):
        _set_id(values, name, value, problems, key)
    elif name == "mail":
        try:
            values["mail"] = mail_template(value)
        except ValueError as exc:
            values["mail_unsupported"] = True
            problems.append(f"userdb_mail {exc}: the user's maildrop is not opened")
    else:
        try:
            quota = parse_quota_rule(value)
        except ValueError as exc:
            problems.append(f"userdb_quota_rule {exc}: ignored, [delivery] quotas apply")
        else:
            values.update(quota)


def _set_id(
    values: dict[str, object], key: str, value: str, problems: list[str], where: str
) -> None:
    if value.isdigit():
        values[key] = int(value)
        return
    try:
        values[key] = pwd.getpwnam(value).pw_uid if key == "uid" else grp.getgrnam(value).gr_gid
    except KeyError:
        problems.append(f"{where} names no {'user' if key == 'uid' else 'group'}: ignored")


def parse_quota_rule(value: str) -> dict[str, int]:
    """Dovecot's ``quota_rule`` for the whole mailbox: ``*:storage=SIZE`` (kilobytes unless
    a b/k/M/G/T suffix), ``*:bytes=SIZE`` (bytes unless a suffix), ``*:messages=N``, several
    separated by ``:``; ``0`` means no limit.  ValueError for anything else (a mailbox
    other than ``*``, a percentage, a relative ``+``/``-`` or ``ignore`` rule)."""
    mailbox, colon, rest = value.partition(":")
    if mailbox != "*" or not colon:
        raise ValueError("is not a rule for the whole mailbox (*:...)")
    found: dict[str, int] = {}
    for part in rest.split(":"):
        key, _, amount = part.partition("=")
        key = key.strip().lower()
        match = _SIZE.fullmatch(amount.strip())
        if key not in ("storage", "bytes", "messages") or match is None:
            raise ValueError("has a limit mailslot cannot apply")
        number, unit = int(match[1]), match[2].lower()
        if key == "messages":
            if unit:
                raise ValueError("has a message count with a size unit")
            found["quota_messages"] = number
        else:
            scale = _UNITS[unit] if unit or key == "bytes" else 1 << 10
            found["quota_bytes"] = number * scale
    return found


_MAIL_VARIABLES = {
    "%u": "{user}",
    "%n": "{localpart}",
    "%d": "{domain}",
    "%h": "{home}",
    "%{user}": "{user}",
    "%{username}": "{localpart}",
    "%{domain}": "{domain}",
    "%{home}": "{home}",
}


def mail_template(value: str) -> str:
    """A ``[store] maildir`` template for Dovecot's ``mail`` value ``maildir:PATH``.

    ``~/``, ``%u``, ``%n``, ``%d`` and ``%h`` (and their ``%{...}`` names) are translated.
    ValueError for another format, options after the path (``:LAYOUT=fs``, ``:INDEX=``) or
    any other variable.
    """
    kind, colon, path = value.partition(":")
    if kind.lower() != "maildir" or not colon:
        raise ValueError("names a mail format other than maildir")
    if ":" in path:
        raise ValueError("has location options mailslot does not support")
    out = path
    for variable, placeholder in sorted(_MAIL_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        out = out.replace(variable, placeholder)
    if "%" in out or not (out.startswith(("/", "~/", "{home}"))):
        raise ValueError("has a variable or a relative path mailslot does not support")
    return out
