"""``[auth] username_format``: Dovecot's ``auth_username_format``, applied before any lookup.

Dovecot normalises every login name with ``auth_username_format`` (default ``%Lu``: the
name lower-cased) before its passdb and userdb see it, so ``Alice`` and ``alice`` are one
user, whose maildrop path and log lines use the normalised name.  The variables are
Dovecot's: ``%u`` (the whole name), ``%n`` (the part before the last ``@``), ``%d`` (the part
after it, empty without one), also spelt ``%{user}``, ``%{username}``, ``%{domain}``, each with
an optional ``L`` (lower-case) or ``U`` (upper-case) modifier (``%Lu``, ``%L{user}``), and
``%%`` for a percent sign; anything else is kept as written.

Case is changed for ASCII letters only, as Dovecot's ``str_lcase()`` does: a Unicode
lower-casing could change a name's length or NFC form (``İ``), and two spellings that
Dovecot keeps apart must stay apart here.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mailslot.auth import usernames
from mailslot.auth.base import Authenticator, User

__all__ = ["DEFAULT", "NormalisingAuthenticator", "apply", "validate_format"]

DEFAULT = "%Lu"

_VARIABLE = re.compile(r"%(?:(%)|([LU]?)(?:([und])|\{(user|username|domain)\})|(.?))")
_LONG = {"user": "u", "username": "n", "domain": "d"}
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def validate_format(fmt: str) -> str | None:
    """A sentence saying what is wrong with ``fmt``, or ``None`` if it is usable."""
    for match in _VARIABLE.finditer(fmt):
        if match[5] is not None:
            shown = "%" + match[5] if match[5] else "a trailing %"
            return f"{shown} is not a variable here; use %u, %n, %d (optionally %L/%U) or %%"
    if not any(match[3] or match[4] for match in _VARIABLE.finditer(fmt)):
        return "names no part of the login name (%u, %n or %d)"
    return None


def apply(fmt: str, name: str) -> str:
    """``name`` as ``fmt`` makes it (the caller validates the result as a user name)."""
    localpart, at, domain = name.rpartition("@")
    if not at:
        localpart, domain = name, ""
    parts = {"u": name, "n": localpart, "d": domain}

    def expand(match: re.Match[str]) -> str:
        if match[1]:
            return "%"
        key = match[3] or _LONG.get(match[4] or "")
        if key is None:
            return match[0]
        value = parts[key]
        if match[2] == "L":
            return value.translate(_LOWER)
        if match[2] == "U":
            return value.translate(_UPPER)
        return value

    return _VARIABLE.sub(expand, fmt)


class NormalisingAuthenticator:
    """An :class:`~mailslot.auth.base.Authenticator` that normalises names for another.

    An invalid name is passed on unchanged, and so is a name the format makes invalid: the
    backend refuses both as it refuses any invalid name, after the same time as a wrong
    password.
    """

    def __init__(self, inner: Authenticator, fmt: str = DEFAULT) -> None:
        self._inner = inner
        self._format: Callable[[str], str] = lambda name: apply(fmt, name)
        self.format = fmt

    @property
    def inner(self) -> Authenticator:
        return self._inner

    @property
    def uses_login_source(self) -> bool:
        """Whether the inner backend reads :data:`mailslot.auth.base.login_source`."""
        return bool(getattr(self._inner, "uses_login_source", False))

    def load(self) -> None:
        """The inner backend's ``load()`` (a passwd-file read at start-up), if it has one."""
        load = getattr(self._inner, "load", None)
        if load is not None:
            load()

    async def aclose(self) -> None:
        """The inner backend's ``aclose()`` (a database pool), if it has one."""
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()

    def normalise(self, name: str) -> str:
        return self._format(name) if usernames.is_valid(name) else name

    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        return await self._inner.authenticate(self.normalise(username), password, client=client)

    async def lookup(self, username: str) -> User | None:
        return await self._inner.lookup(self.normalise(username))
