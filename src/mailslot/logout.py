"""The logout summary of a session: its counts, and ``[log] logout_format`` as Dovecot's
``pop3_logout_format`` expands it (Dovecot 2.3 ``src/pop3/pop3-client.c``, ``client_stats``).

The counts mean what Dovecot's do, so that the two servers log the same numbers for the same
session (tests/integration/test_logout_summary.py compares them):

====  =================  =========================================================
%t    ``top_count``      TOP commands answered with a message
%p    ``top_bytes``      octets sent for them: the ``+OK`` line and the dot-stuffed
                         lines, not the terminating ``.`` line
%r    ``retr_count``     RETR commands answered with a message
%b    ``retr_bytes``     octets sent for them, counted as for TOP
%d    ``deleted_count``  messages deleted by QUIT (durably)
%m    ``message_count``  messages in the maildrop at login
%s    ``message_bytes``  their size at login, as LIST gives it
%i    ``input``          octets received after the login command
%o    ``output``         octets sent from the login's ``+OK`` on
%u    ``uidl_change``    ``count/hash`` of the messages the client probably had
                         before (all, or those below the first RETR), then
                         `` -> count/hash`` of those it keeps when they differ; the
                         hash is the XOR of the CRC-32 of their UIDLs.  Empty unless
                         the client asked UIDL (Dovecot's too)
====  =================  =========================================================

``%%`` is a percent sign; ``%{name}`` is the long form.  Dovecot's modifiers (``%L``,
``%0.5u``...) are not taken: :func:`check` names what it does not know.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence, Set

__all__ = [
    "DEFAULT_FORMAT",
    "LogoutCounts",
    "check",
    "end_kind",
    "expand",
    "uidl_change",
    "wants_uidl_change",
]

DEFAULT_FORMAT = "top=%t/%p, retr=%r/%b, del=%d/%m, size=%s"

_SHORT = {
    "t": "top_count",
    "p": "top_bytes",
    "r": "retr_count",
    "b": "retr_bytes",
    "d": "deleted_count",
    "m": "message_count",
    "s": "message_bytes",
    "i": "input",
    "o": "output",
    "u": "uidl_change",
}
_LONG = frozenset(_SHORT.values())
_VARIABLE = re.compile(r"%(?:\{([^}]*)\}|(.)|$)", re.DOTALL)


class LogoutCounts:
    """What a logged-in session did, counted as it goes (made at login)."""

    __slots__ = (
        "deleted_bytes",
        "deleted_count",
        "in_at_login",
        "input",
        "message_bytes",
        "message_count",
        "out_at_login",
        "output",
        "retr_bytes",
        "retr_count",
        "stored_octets",
        "top_bytes",
        "top_count",
        "uidl_change",
    )

    def __init__(self, message_count: int, message_bytes: int, in_at: int, out_at: int) -> None:
        self.message_count = message_count
        self.message_bytes = message_bytes
        self.in_at_login = in_at
        self.out_at_login = out_at
        self.top_count = self.top_bytes = 0
        self.retr_count = self.retr_bytes = 0
        self.deleted_count = self.deleted_bytes = 0
        self.stored_octets = 0  # stored sizes of the messages sent (RETR and TOP)
        self.input = self.output = 0
        self.uidl_change = ""

    def sent(self, top: bool, octets: int, stored: int) -> None:
        """A RETR or TOP sent ``octets`` (see the table above) of a message of ``stored``."""
        if top:
            self.top_count += 1
            self.top_bytes += octets
        else:
            self.retr_count += 1
            self.retr_bytes += octets
        self.stored_octets += stored

    def ended(self, octets_in: int, octets_out: int) -> None:
        """The session's totals at its end: what was after login is counted."""
        self.input = octets_in - self.in_at_login
        self.output = octets_out - self.out_at_login

    def value(self, name: str) -> str:
        return str(getattr(self, name))


def wants_uidl_change(template: str) -> bool:
    """Whether ``template`` uses %u (the hashes cost a CRC-32 per message: only then)."""
    return any(
        match.group(1) == "uidl_change" or match.group(2) == "u"
        for match in _VARIABLE.finditer(template)
    )


def uidl_change(uids: Sequence[str], listed: bool, marks: Set[int], lowest_retr: int) -> str:
    """Dovecot's ``uidl_change`` (pop3-client.c, client_build_uidl_change_string).

    ``listed``: whether the client asked UIDL (Dovecot then reads every message's UIDL,
    marked or not); ``marks``: the delete marks at the end; ``lowest_retr``: the lowest
    message RETR asked for (0: none).  Message numbers count from 1.
    """
    if not listed:
        return ""
    hashes = [zlib.crc32(uid.encode("utf-8")) for uid in uids]
    old_count = lowest_retr - 1 if lowest_retr > 0 else len(uids)
    old_hash = new_hash = 0
    for value in hashes[:old_count]:
        old_hash ^= value
    for n, value in enumerate(hashes, 1):
        if n not in marks:
            new_hash ^= value
    new_count = len(uids) - len(marks)
    if old_hash == new_hash and old_count == new_count:
        return f"{old_count}/{old_hash:08x}"
    return f"{old_count}/{old_hash:08x} -> {new_count}/{new_hash:08x}"


def check(template: str) -> str | None:
    """What is wrong with ``template`` (a variable neither Dovecot's nor ours), or None."""
    for match in _VARIABLE.finditer(template):
        long, short = match.group(1), match.group(2)
        if long is not None:
            if long not in _LONG:
                return f"unknown variable %{{{long}}} (known: {', '.join(sorted(_LONG))})"
        elif short is None:
            return "ends in a lone %"
        elif short != "%" and short not in _SHORT:
            return f"unknown variable %{short} (known: %{', %'.join(_SHORT)} and %%)"
    return None


def expand(template: str, counts: LogoutCounts) -> str:
    """``template`` with its variables replaced (check() it first: others stay as they are)."""

    def one(match: re.Match[str]) -> str:
        long, short = match.group(1), match.group(2)
        if long is not None:
            return counts.value(long) if long in _LONG else match.group()
        if short == "%":
            return "%"
        name = _SHORT.get(short or "")
        return counts.value(name) if name is not None else match.group()

    return _VARIABLE.sub(one, template)


_END_KINDS = {
    "quit": "quit",
    "quit, deletions failed": "quit",
    "idle timeout": "timeout",
    "login timeout": "timeout",
    "server shutdown": "kicked",
    "client closed the connection": "disconnect",
    "connection lost": "disconnect",
}


def end_kind(reason: str) -> str:
    """How a session ended, from its reason: ``quit``, ``timeout``, ``kicked`` (by the
    server: shutdown, an administrator), ``disconnect`` (by the client or the network) or
    ``error``."""
    kind = _END_KINDS.get(reason)
    if kind is not None:
        return kind
    if reason.startswith("connection lost"):
        return "disconnect"
    if reason.startswith("kicked"):
        return "kicked"
    if "timeout" in reason:
        return "timeout"
    return "error"
