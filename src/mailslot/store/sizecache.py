"""The Maildir size cache: wire sizes of messages whose names carry no ``,W=`` field.

Computing a wire size means reading the whole file (:mod:`mailslot.store.wiresize`), which LIST
on a large maildrop cannot afford at every login.  The cache ``<maildir>/.mailslot-sizes`` keeps
``<base> <physical size> <wire size>`` per message; an entry is trusted only while the file's
physical size still matches.  A header and a SHA-256 trailer make a torn or edited file read as
empty instead of as wrong sizes, so the cache never needs an fsync: losing it costs only time.
"""

from __future__ import annotations

import hashlib
import os
import re

from mailslot.store import fsutil

NAME = ".mailslot-sizes"
HEADER = b"mailslot-sizes 1\n"
_LINE = re.compile(r"^(.+) (\d+) (\d+)$", re.MULTILINE)
_TRAILER = b"end "

CacheEntries = dict[str, tuple[int, int]]


def cacheable(base: str) -> bool:
    """Names with line breaks cannot be stored one per line; their sizes are recomputed."""
    return "\n" not in base and "\r" not in base


def load(maildir: int, name: str = NAME) -> CacheEntries:
    """Return the cached entries, or none at all if the file is missing or damaged.

    ``maildir`` is the descriptor of the Maildir directory (:mod:`mailslot.store.confine`).
    """
    data = fsutil.read_own_file(maildir, name)
    if data is None or not data.startswith(HEADER):
        return {}
    body_end = data.rfind(b"\n", 0, len(data) - 1) + 1
    trailer = data[body_end:]
    body = data[len(HEADER) : body_end]
    if body_end < len(HEADER) or not trailer.startswith(_TRAILER):
        return {}
    if trailer[len(_TRAILER) :].strip() != hashlib.sha256(body).hexdigest().encode():
        return {}
    text = os.fsdecode(body)
    rows = _LINE.findall(text)
    if len(rows) != text.count("\n"):
        return {}
    return {base: (int(physical), int(wire)) for base, physical, wire in rows}


def save(maildir: int, entries: CacheEntries, name: str = NAME) -> None:
    """Replace the cache atomically (write a temporary file, then rename over)."""
    body = b"".join(
        b"%s %d %d\n" % (os.fsencode(base), physical, wire)
        for base, (physical, wire) in sorted(entries.items())
    )
    data = HEADER + body + _TRAILER + hashlib.sha256(body).hexdigest().encode() + b"\n"
    # As root, the cache is the Maildir owner's, as every file in it (Dovecot's files too).
    st = os.fstat(maildir)
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    fsutil.replace_file(maildir, name, data, owner=owner)
