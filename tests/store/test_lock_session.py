"""``[store] lock_session = false`` (Dovecot's ``pop3_lock_session = no``) on a real Maildir.

RFC 1939 section 8 wants one session per maildrop, and that stays the default (the first
test).  Without it, two sessions of one maildrop run side by side, each with its own
snapshot; the lock is held only to take a snapshot and to commit.  A message the other
session deleted is simply gone (RETR: MessageGone; DELE at QUIT: no error), nothing deleted
comes back, and nothing that was not deleted is lost.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from mailslot.store.base import MaildropLocked, MessageGone
from mailslot.store.maildir import LOCK_FILE, MaildirStore

from .conftest import read_all, run


def _fill(root: Path, count: int) -> Path:
    maildir = root / "alice" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (maildir / "cur" / f"{1_700_000_000 + n}.M{n}P1.host:2,").write_bytes(
            f"Subject: {n}\n\nbody {n}\n".encode()
        )
    return maildir


def _store(root: Path, lock_session: bool) -> MaildirStore:
    return MaildirStore(str(root / "{user}" / "Maildir"), lock_session=lock_session)


def test_the_default_lock_is_exclusive(tmp_path: Path) -> None:
    _fill(tmp_path, 2)
    store = MaildirStore(str(tmp_path / "{user}" / "Maildir"))

    async def scenario() -> None:
        first = await store.open("alice")
        try:
            with pytest.raises(MaildropLocked):
                await store.open("alice")
        finally:
            await first.close()

    run(scenario())


def test_overlapping_deletions_lose_nothing_and_resurrect_nothing(tmp_path: Path) -> None:
    maildir = _fill(tmp_path, 5)
    store = _store(tmp_path, lock_session=False)

    async def scenario() -> list[str]:
        first = await store.open("alice")
        second = await store.open("alice")  # no [IN-USE]: sessions run side by side
        assert [m.key for m in first.messages] == [m.key for m in second.messages]
        one, two = first.messages, second.messages
        # Each deletes message 2; the first also 1, the second also 4.
        await first.delete([one[0], one[1]])
        # Message 1 is gone for the second session: reading it says so.
        with pytest.raises(MessageGone):
            await read_all(second, two[0])
        await second.delete([two[1], two[3]])  # 2 was gone already: not an error
        await first.close()
        await second.close()
        third = await store.open("alice")
        try:
            return [m.key for m in third.messages]
        finally:
            await third.close()

    left = run(scenario())
    assert left == [f"{1_700_000_000 + n}.M{n}P1.host" for n in (2, 4)]
    assert sorted(os.listdir(maildir / "cur")) == sorted(f"{key}:2," for key in left)


def test_a_commit_waits_for_the_lock(tmp_path: Path) -> None:
    """While another process holds the Maildir's lock (say, a commit in another worker), a
    shared session's open and commit wait for it rather than fail or go ahead."""
    maildir = _fill(tmp_path, 2)
    store = _store(tmp_path, lock_session=False)

    async def scenario() -> None:
        import asyncio

        maildrop = await store.open("alice")
        fd = os.open(maildir / LOCK_FILE, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            commit = asyncio.ensure_future(maildrop.delete([maildrop.messages[0]]))
            opening = asyncio.ensure_future(store.open("alice"))
            done, _ = await asyncio.wait({commit, opening}, timeout=0.5)
            assert not done  # both wait for the lock
            assert len(os.listdir(maildir / "cur")) == 2
            fcntl.flock(fd, fcntl.LOCK_UN)
            await commit
            other = await opening
            await other.close()
        finally:
            os.close(fd)
            await maildrop.close()
        assert len(os.listdir(maildir / "cur")) == 1

    run(scenario())
