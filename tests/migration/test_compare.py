"""``--verify``'s comparison of two open maildrops (RFC 1939 STAT, LIST, UIDL and bytes),
over the in-memory store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mailslot.migration.verify import SHOWN, compare_maildrops
from mailslot.store.memory import MemoryStore


def compare(old: Sequence[bytes], new: Sequence[bytes]) -> list[str]:
    async def run() -> list[str]:
        a, b = MemoryStore(), MemoryStore()
        for data in old:
            a.put("u", data)
        for data in new:
            b.put("u", data)
        left, right = await a.open("u"), await b.open("u")
        try:
            return await compare_maildrops(left, right)
        finally:
            await left.close()
            await right.close()

    return asyncio.run(run())


def test_identical_maildrops_have_no_differences() -> None:
    assert compare([b"a\n", b"bb\n"], [b"a\n", b"bb\n"]) == []


def test_changed_bytes_of_the_same_size_are_reported_by_their_message() -> None:
    problems = compare([b"a\n", b"bb\n"], [b"a\n", b"bc\n"])
    assert len(problems) == 1
    assert problems[0].startswith("message 2 (UIDL ")
    assert problems[0].endswith("the bytes differ")


def test_a_missing_message_shows_in_stat_list_and_uidl() -> None:
    problems = compare([b"a\n", b"bb\n"], [b"a\n"])
    assert problems[0] == "STAT: Maildir 2 7, PostgreSQL 1 3"
    assert any(
        p.startswith("UIDL 2: Maildir ") and p.endswith("PostgreSQL (none)") for p in problems
    )
    assert "LIST 2: Maildir 4, PostgreSQL (none)" in problems


def test_many_differences_are_summed_up_after_the_first_few() -> None:
    problems = compare([b"x\n"] * 20, [b"y\n"] * 20)
    assert len([p for p in problems if p.startswith("message ")]) == SHOWN
    assert problems[-1] == f"bytes: {20 - SHOWN} more messages differ"
