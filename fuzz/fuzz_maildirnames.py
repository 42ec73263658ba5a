#!/usr/bin/env python3
"""Fuzz the Maildir name parser and unique-ids (RFC 1939 section 7; cr.yp.to/proto/maildir.html).

Input: one octet of flags, then file names separated by ``/`` (the one character no name can
hold), read as the file system gives them to Python (``os.fsdecode``: surrogate escapes for
undecodable octets).  Names a directory cannot hold (empty, ``.``, ``..``, a NUL, over 255
octets) are dropped.  Flag bits add names forged to collide with others' unique-ids
(``H`` and a digest, what :func:`uid_of` gives a name that is not one) and names in the form
mailslot writes.  Properties checked, beyond "no crash":

- :func:`parse` is deterministic, and :func:`parse_bases` (the fast path) gives exactly what
  :func:`parse` gives for each name, and says "plain" exactly when every name is its own uid;
- a name in the form :class:`UniqueNames` writes parses to its time and ``,W=`` size;
- :func:`uid_of` is 1 to 70 octets of 0x21-0x7E (RFC 1939 section 7), the name itself when
  that is one, and :func:`uids_of` gives distinct names distinct uids, each :func:`uid_of` of
  its name unless an earlier name holds it, and the names themselves when all are "plain";
- :func:`base_of` has no ``:`` and ``sort_key`` orders by (time, name).

Run: ``python fuzz/fuzz_maildirnames.py fuzz/corpus/maildirnames -runs=N`` (docs/fuzzing.md).
"""

from __future__ import annotations

import os
import re

from _harness import Reader, main

from mailslot.store.maildirnames import (
    base_of,
    parse,
    parse_bases,
    sort_key,
    uid_of,
    uids_of,
    wire_size_from_name,
)

_UID = re.compile(r"[\x21-\x7e]{1,70}")
_NAME_MAX = 255  # octets in one file name (NAME_MAX on Linux)


def valid_name(name: str) -> bool:
    """A name one directory entry can have."""
    encoded = os.fsencode(name)
    return name not in ("", ".", "..") and b"\x00" not in encoded and len(encoded) <= _NAME_MAX


def names_of(data: bytes) -> list[str]:
    return [name for raw in data.split(b"/") if valid_name(name := os.fsdecode(raw))]


def forgeries(bases: list[str]) -> list[str]:
    """Names whose text is the uid another name would get, and the uid its second try gets."""
    forged = []
    for base in bases:
        first = uid_of(base)
        if first != base:
            forged.append(first)
        forged.append(uid_of("\n" + first))
        forged.append(uid_of("\n" + base))
    return forged


def written_names(reader: Reader) -> list[tuple[str, float, int]]:
    """Names in UniqueNames' form ``<secs>.M<usec>P<pid>Q<n>.<host>,S=<n>,W=<n>``."""
    out = []
    for _ in range(reader.byte() % 4):
        secs, usec, wire = reader.uint(5), reader.uint(3) % 1_000_000, reader.uint(4)
        host = reader.take(reader.byte() % 16).decode("ascii", "replace")
        host = host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")
        name = f"{secs}.M{usec}P{reader.uint(2)}Q{reader.byte()}.{host},S={wire},W={wire}"
        if valid_name(name):
            out.append((name, float(secs * 1_000_000 + usec), wire))
    return out


def check_uid(uid: str) -> None:
    assert _UID.fullmatch(uid), uid
    assert len(uid.encode("ascii")) <= 70


def check(data: bytes) -> None:
    """The property function: see the module docstring."""
    reader = Reader(data)
    flags = reader.byte()
    written = written_names(reader) if flags & 2 else []
    names = [name for name, _, _ in written] + names_of(reader.rest())
    for name, order, wire in written:
        assert parse(name) == (order, wire), name
    bases = [base_of(name) for name in names]
    for name, base in zip(names, bases, strict=True):
        assert ":" not in base and name.startswith(base)
        parsed = parse(base)
        assert parse(base) == parsed and wire_size_from_name(base) == parsed[1]
        assert sort_key(base) == (parsed[0], base)
        uid = uid_of(base)
        check_uid(uid)
        is_own = 0 < len(base) <= 70 and bool(_UID.fullmatch(base))
        assert (uid == base) == is_own, (base, uid)
    bases = [base for base in dict.fromkeys(bases) if base]  # distinct, as in a maildrop
    if flags & 1:
        bases = list(dict.fromkeys(bases + forgeries(bases)))
        if flags & 4:
            bases.reverse()
    orders, wires, plain = parse_bases(bases)
    assert list(zip(orders, wires, strict=True)) == [parse(base) for base in bases]
    assert plain == all(uid_of(base) == base for base in bases), bases
    uids = uids_of(bases)
    assert len(set(uids)) == len(uids), f"two names share a unique-id: {bases!r} -> {uids!r}"
    taken: set[str] = set()
    for base, uid in zip(bases, uids, strict=True):
        check_uid(uid)
        assert uid == uid_of(base) or uid_of(base) in taken, (base, uid)
        taken.add(uid)
    if plain:
        assert uids == bases


if __name__ == "__main__":
    main(check)
