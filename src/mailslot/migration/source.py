"""What ``mailslot migrate`` moves: the users of the old configuration's passwd-file.

Each user's name, stored ``{SCHEME}data`` and home, in file order.  The names are validated
(:func:`mailslot.auth.passwdfile.parse_entry`) before any of them touches a path; a malformed
line is an error, not a user silently left behind.
"""

from __future__ import annotations

from pathlib import Path

from mailslot.auth.passwdfile import Entry, parse_entry
from mailslot.config import Config


class SourceError(Exception):
    """The old configuration cannot say whom to move; the message says why."""


def passwd_entries(config: Config) -> list[Entry]:
    """Every user line of ``config``'s ``[auth] passwd_file``."""
    path = config.auth.passwd_file
    if config.auth.backend != "passwd-file" or path is None:
        raise SourceError(
            f'{config.source}: [auth] backend is not "passwd-file" with a passwd_file: '
            "name the users with --user"
        )
    if "{" in str(path):
        raise SourceError(
            f"{config.source}: [auth] passwd_file {path} is a template: name the users with --user"
        )
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"[auth] passwd_file {path}: cannot read it: {exc}") from exc
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = parse_entry(line)
        except ValueError as exc:
            raise SourceError(f"[auth] passwd_file {path} line {number}: {exc}") from None
        if entry is not None:
            entries.append(entry)
    return entries
