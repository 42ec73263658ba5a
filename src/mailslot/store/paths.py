"""Maildir location templates: ``{user}``, ``{localpart}``, ``{domain}``, ``{home}`` and ``~/``.

The template syntax follows Dovecot's ``mail_location = maildir:~/Maildir``.  User names are
validated before they get here (:mod:`mailslot.auth.usernames`), but a path built from client
input is checked again: no expanded component may be ``..`` or contain NUL, and a value taken
from the user name may not contain ``/`` or be ``.``, so no name can escape its own directory.
"""

from __future__ import annotations

import os

from mailslot.store.base import PermanentFailure


def split_user(user: str) -> tuple[str, str]:
    """Return ``(localpart, domain)``: split at the last ``@``; domain is empty without one."""
    localpart, at, domain = user.rpartition("@")
    if not at:
        return user, ""
    return localpart, domain


def _check_name_value(what: str, value: str, *, may_be_empty: bool = False) -> None:
    if not value and may_be_empty:
        return
    if value in ("", ".", "..") or "/" in value or "\x00" in value:
        raise PermanentFailure(f"{what} cannot be used in a maildir path")


# Called at every login, and not memoised: a cache entry per user (some 150 bytes, up to
# thousands of users per worker) cost more than the 1.2 us a call takes.
def expand(template: str, user: str, home: str | None) -> str:
    """Expand ``template`` for ``user``; raise :class:`PermanentFailure` if it is unsafe.

    The result is an absolute, unnormalised path (symlinks an administrator set up are kept).
    """
    localpart, domain = split_user(user)
    _check_name_value("user name", user)
    _check_name_value("local part", localpart)
    _check_name_value("domain", domain, may_be_empty=True)
    if template.startswith("~/"):
        template = "{home}/" + template[2:]
    if "{home}" in template:
        if home is None:
            raise PermanentFailure("the maildir template needs a home directory and none is set")
        if "\x00" in home or not home:
            raise PermanentFailure("home directory cannot be used in a maildir path")
    # str.replace, not str.format: format would let a template reach attributes ({user.x}).
    path = (
        template.replace("{user}", user)
        .replace("{localpart}", localpart)
        .replace("{domain}", domain)
        .replace("{home}", home or "")
    )
    if not os.path.isabs(path):
        raise PermanentFailure("the maildir path is not absolute")
    for component in path.split("/"):
        if component == ".." or "\x00" in component:
            raise PermanentFailure("the maildir path has an unsafe component")
    return path
