"""Maildir file names: base names, delivery order, RFC 1939 unique-ids and new unique names.

A Maildir file name is ``<base>[:<info>]`` (cr.yp.to/proto/maildir.html); the info part
(``:2,`` and flags) changes as flags change, the base never does.  Dovecot adds
``,S=<physical size>`` and ``,W=<RFC 822 wire size>`` to the base (Dovecot wiki, maildir
format), and we write the same.  Base names usually begin ``<seconds>.M<usec>P<pid>...``,
which gives delivery order.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import os
import re
import socket
import threading
import time

# One match per name: the leading seconds, the first M<digits> token of the second dot-field
# (microseconds), and the last ,W=<n>.  This defines both; parse_bases() is a faster way to
# the same result for the names Dovecot and mailslot write.
_NAME = re.compile(r"(?:(\d+)(?:\.[^.]*?M(\d+))?)?(?:.*,W=(\d+))?", re.DOTALL)
# The microseconds of each of "/"-joined bases ("/" is the one character no name holds).
_USECS = re.compile(r"(?:\d+\.[^./]*?M(\d+))?[^/]*/")
# The bytes a unique-id may hold (RFC 1939 section 7): 0x21-0x7E.
_UID_BYTES = bytes(range(0x21, 0x7F))

SortKey = tuple[float, str]
_UNTIMED = float("inf")


def base_of(name: str) -> str:
    """The base name: everything before the first ``:``."""
    return name.partition(":")[0]


def parse(base: str) -> tuple[float, int | None]:
    """Return ``(delivery time, wire size)`` of a base name; see :func:`sort_key`.

    The time is microseconds since the epoch as one float (exact until the year 2255), since
    list.sort compares floats far faster than tuples; names without leading seconds get
    infinity.  The wire size is ``,W=<n>``, if present.
    """
    match = _NAME.match(base)
    assert match is not None  # every part of the pattern is optional
    seconds, usec, wire = match.groups()
    order = float(int(seconds) * 1_000_000 + int(usec or 0)) if seconds else _UNTIMED
    return order, int(wire) if wire else None


def parse_bases(bases: list[str]) -> tuple[list[float], list[int | None], bool]:
    """:func:`parse` of each of ``bases``: their delivery times and wire sizes, in order, and
    whether every base is its own unique-id (see :func:`uids_of`).

    This runs at every login for every message (100,000 of them in a large maildrop), so the
    usual names, ``<seconds>.M<usec>...,W=<n>``, are read by a few C-level passes over all of
    them at once, with no Python code and no object per name beyond the numbers; any other
    name sends the whole list through :func:`parse`.
    """
    if not bases:
        return [], [], True
    # "/" is the one character no name holds, so it cannot hide or forge anything.
    joined = "/".join(bases) + "/"
    plain = (
        joined.isascii()  # O(1)
        # 0x21-0x7E only (printable, no space): nothing left once those are deleted
        and not joined.encode("ascii").translate(None, _UID_BYTES)
        and "//" not in joined
        and not joined.startswith("/")
        and max(map(len, bases)) <= 70
    )
    seconds = [base.partition(".")[0] for base in bases]
    # Everything after the last ",W=", or the whole base (which holds a "." when a usec is
    # found below) if there is none: either way only a real size is all digits.
    wires = [base.rpartition(",W=")[2] for base in bases]
    if "".join(seconds).isdecimal() and "".join(wires).isdecimal():
        try:  # int("") (no seconds, usec or size in some name) is the one error left
            micros = map(operator.mul, map(int, seconds), itertools.repeat(1_000_000))
            usecs = map(int, _USECS.findall(joined))
            orders = list(map(float, map(operator.add, micros, usecs)))
            return orders, list(map(int, wires)), plain
        except ValueError:
            pass
    parsed = [parse(base) for base in bases]
    return [order for order, _ in parsed], [wire for _, wire in parsed], plain


def sort_key(base: str) -> SortKey:
    """Delivery order, oldest first: seconds, then microseconds, then the name itself.

    Names without leading seconds (not written by a Maildir MDA) sort last, by name.
    """
    return parse(base)[0], base


def uid_of(base: str) -> str:
    """RFC 1939 section 7 unique-id, derived from the base name alone.

    Deriving it from the immutable base name (not from our own metadata) keeps it stable even
    if every mailslot file is lost.  Names that are not valid unique-ids are hashed; the
    ``H`` prefix and 40 hex digits cannot be produced by our own deliveries.
    """
    # ASCII, printable and no space is exactly 0x21-0x7E (string methods: LIST on 100k).
    if 0 < len(base) <= 70 and base.isascii() and base.isprintable() and " " not in base:
        return base
    digest = hashlib.sha256(os.fsencode(base)).hexdigest()[:40]
    return "H" + digest


def uids_of(bases: list[str]) -> list[str]:
    """The unique-id of each of ``bases`` (distinct base names, in delivery order).

    Each is :func:`uid_of`, except that a uid already given to an earlier base (only a forged
    ``H<digest>`` name can collide with a digest) is replaced by a digest of its own: of
    ``"\\n" + base``, and while that is taken too (a second forgery), of one more ``"\\n"``
    in front.  When every base is its own uid (see :func:`parse_bases`), that is simply
    ``bases``.
    """
    uids: list[str] = []
    seen: set[str] = set()
    for base in bases:
        uid = uid_of(base)
        salted = base
        while uid in seen:
            # Each round needs one more forged name to collide, and they are finite.
            salted = "\n" + salted
            uid = uid_of(salted)
        seen.add(uid)
        uids.append(uid)
    return uids


def wire_size_from_name(base: str) -> int | None:
    """The ``,W=<n>`` size Dovecot and mailslot write into base names, if present."""
    return parse(base)[1]


def escape_hostname(hostname: str) -> str:
    """Escape ``/`` and ``:`` as the Maildir specification says (``\\057``, ``\\072``).

    ``,`` is escaped too (``\\054``) so a host name can never forge a ``,W=`` size field.
    """
    return hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


class UniqueNames:
    """Generates ``<secs>.M<usec>P<pid>Q<counter>.<host>,S=<n>,W=<n>`` delivery names.

    The per-process counter makes names unique even when the clock does not advance; the
    pid separates processes; the host separates machines sharing the Maildir.
    """

    def __init__(self, hostname: str | None = None) -> None:
        self._hostname = escape_hostname(hostname or socket.gethostname() or "localhost")
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def make(self, physical: int, wire: int) -> str:
        with self._lock:
            counter = next(self._counter)
        now = time.time_ns() // 1000
        secs, usec = divmod(now, 1_000_000)
        return f"{secs}.M{usec}P{os.getpid()}Q{counter}.{self._hostname},S={physical},W={wire}"
