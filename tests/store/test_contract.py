"""The store contract (mailslot.store.base), run against every backend.

RFC 1939 sections 3, 6, 7 and 8: one exclusive session per maildrop, a snapshot for the
session, removal only of marked messages, unique-ids that are stable and never reused, and
sizes that are exactly what RETR sends.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailslot.store.base import MaildropLocked, MessageGone, PartialDeletion, TemporaryFailure

from .conftest import Backend, read_all, run

UIDL_CHARS = re.compile(r"[\x21-\x7e]{1,70}")


def crlf_size(data: bytes) -> int:
    """The wire size spelled out the slow way: every bare LF becomes CRLF."""
    return len(re.sub(rb"(?<!\r)\n", b"\r\n", data))


def test_empty_maildrop_opens_with_no_messages(backend: Backend) -> None:
    async def scenario() -> None:
        maildrop = await backend.store.open("alice")
        assert list(maildrop.messages) == []
        await maildrop.close()

    run(scenario())


def test_snapshot_is_in_delivery_order_and_serves_the_stored_bytes(backend: Backend) -> None:
    bodies = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(5)]

    async def scenario() -> None:
        keys = [await backend.store.deliver("alice", body) for body in bodies]
        maildrop = await backend.store.open("alice")
        assert [m.key for m in maildrop.messages] == keys
        assert [await read_all(maildrop, m) for m in maildrop.messages] == bodies
        await maildrop.close()

    run(scenario())


def test_delivery_after_open_is_only_in_the_next_snapshot(backend: Backend) -> None:
    async def scenario() -> None:
        await backend.store.deliver("alice", b"first\n")
        maildrop = await backend.store.open("alice")
        late = await backend.store.deliver("alice", b"late\n")
        assert [await read_all(maildrop, m) for m in maildrop.messages] == [b"first\n"]
        await maildrop.close()
        maildrop = await backend.store.open("alice")
        assert [m.key for m in maildrop.messages][-1] == late
        assert len(maildrop.messages) == 2
        await maildrop.close()

    run(scenario())


def test_lock_is_exclusive_per_user_and_released_by_close(backend: Backend) -> None:
    async def scenario() -> None:
        first = await backend.store.open("alice")
        with pytest.raises(MaildropLocked):
            await backend.store.open("alice")
        other = await backend.store.open("bob")  # another user's maildrop is independent
        await other.close()
        await first.close()
        await first.close()  # idempotent, and must not release someone else's lock
        second = await backend.store.open("alice")
        with pytest.raises(MaildropLocked):
            await backend.store.open("alice")
        await first.close()
        with pytest.raises(MaildropLocked):
            await backend.store.open("alice")
        await second.close()

    run(scenario())


def test_delete_removes_exactly_the_marked_messages(backend: Backend) -> None:
    async def scenario() -> None:
        keys = [await backend.store.deliver("alice", b"m%d\n" % n) for n in range(4)]
        maildrop = await backend.store.open("alice")
        marked = [maildrop.messages[1], maildrop.messages[3]]
        await maildrop.delete(marked)
        await maildrop.close()
        maildrop = await backend.store.open("alice")
        assert [m.key for m in maildrop.messages] == [keys[0], keys[2]]
        assert [await read_all(maildrop, m) for m in maildrop.messages] == [b"m0\n", b"m2\n"]
        await maildrop.delete([])  # nothing marked: nothing happens
        await maildrop.close()

    run(scenario())


def test_a_deletion_that_fails_part_way_says_how_far_and_finishes_at_the_next_open(
    backend: Backend,
) -> None:
    """RFC 1939 section 6: QUIT must not claim success for a partial removal, and the
    messages it did remove (or will) are never listed again."""

    async def scenario() -> None:
        keys = [await backend.store.deliver("alice", b"m%d\n" % n) for n in range(4)]
        maildrop = await backend.store.open("alice")
        backend.fail_removal_at(2)
        if backend.atomic_delete:
            # One transaction: the failure removes none, and says so with no count.
            with pytest.raises(TemporaryFailure) as failed:
                await maildrop.delete(maildrop.messages[:3])
            assert not isinstance(failed.value, PartialDeletion)
            await maildrop.close()
            maildrop = await backend.store.open("alice")
            assert [m.key for m in maildrop.messages] == keys
            await maildrop.close()
            return
        with pytest.raises(PartialDeletion) as raised:
            await maildrop.delete(maildrop.messages[:3])
        assert (raised.value.deleted, raised.value.pending) == (2, True)
        await maildrop.close()
        maildrop = await backend.store.open("alice")
        assert [m.key for m in maildrop.messages] == [keys[3]]
        assert [await read_all(maildrop, m) for m in maildrop.messages] == [b"m3\n"]
        await maildrop.close()
        maildrop = await backend.store.open("alice")  # nothing resurrected later either
        assert [m.key for m in maildrop.messages] == [keys[3]]
        await maildrop.close()

    run(scenario())


def test_delete_ignores_messages_of_another_maildrop(backend: Backend) -> None:
    async def scenario() -> None:
        await backend.store.deliver("alice", b"alice's\n")
        await backend.store.deliver("bob", b"bob's\n")
        alice = await backend.store.open("alice")
        bob = await backend.store.open("bob")
        await alice.delete(bob.messages)
        await alice.close()
        await bob.close()
        alice = await backend.store.open("alice")
        bob = await backend.store.open("bob")
        assert len(alice.messages) == 1
        assert len(bob.messages) == 1
        await alice.close()
        await bob.close()

    run(scenario())


def test_uids_are_valid_unique_and_stable_across_sessions_and_deletions(
    backend: Backend,
) -> None:
    async def scenario() -> None:
        for n in range(5):
            await backend.store.deliver("alice", b"m%d\n" % n)
        maildrop = await backend.store.open("alice")
        before = {m.key: m.uid for m in maildrop.messages}
        assert all(UIDL_CHARS.fullmatch(uid) for uid in before.values())
        assert len(set(before.values())) == len(before)
        await maildrop.close()

        maildrop = await backend.store.open("alice")
        assert {m.key: m.uid for m in maildrop.messages} == before
        await maildrop.delete([maildrop.messages[0], maildrop.messages[2]])
        await maildrop.close()

        maildrop = await backend.store.open("alice")
        after = {m.key: m.uid for m in maildrop.messages}
        assert len(after) == 3
        assert all(before[key] == uid for key, uid in after.items())
        await maildrop.close()

    run(scenario())


def test_uid_is_never_reused_after_delete_and_new_delivery(backend: Backend) -> None:
    async def scenario() -> None:
        seen: set[str] = set()
        for round_ in range(3):
            await backend.store.deliver("alice", b"same body\n")
            maildrop = await backend.store.open("alice")
            (message,) = maildrop.messages
            assert message.uid not in seen, f"uid reused in round {round_}"
            seen.add(message.uid)
            await maildrop.delete([message])
            await maildrop.close()

    run(scenario())


@pytest.mark.parametrize(
    "data",
    [
        b"a\nb\n",  # bare LF
        b"a\r\nb\r\n",  # CRLF already
        b"a\r\nb\nc\r\n\n",  # mixed
        b"no final newline",
        b"last line\nwithout newline",
        b"",
        b"\r\r\n\n\r",  # lone CRs count as themselves
    ],
)
def test_size_is_the_crlf_wire_size(backend: Backend, data: bytes) -> None:
    async def scenario() -> None:
        await backend.store.deliver("alice", data)
        maildrop = await backend.store.open("alice")
        (message,) = maildrop.messages
        assert message.size == crlf_size(data)
        assert await read_all(maildrop, message) == data
        await maildrop.close()

    run(scenario())


_users = itertools.count()


# One backend serves every example; each example uses a user of its own, so nothing leaks.
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=2000) | st.lists(st.sampled_from([b"\r", b"\n", b"x"])).map(b"".join)
)
def test_size_and_bytes_round_trip_for_any_content(backend: Backend, data: bytes) -> None:
    user = f"prop{next(_users)}"

    async def scenario() -> None:
        await backend.store.deliver(user, data)
        maildrop = await backend.store.open(user)
        (message,) = maildrop.messages
        assert message.size == crlf_size(data)
        chunks = [chunk async for chunk in maildrop.read(message, 7)]
        assert all(0 < len(chunk) <= 7 for chunk in chunks)
        assert b"".join(chunks) == data
        await maildrop.close()

    run(scenario())


def test_message_removed_behind_our_back_is_gone(backend: Backend) -> None:
    async def scenario() -> None:
        key = await backend.store.deliver("alice", b"doomed\n")
        maildrop = await backend.store.open("alice")
        backend.remove_behind_back("alice", key)
        with pytest.raises(MessageGone):
            await read_all(maildrop, maildrop.messages[0])
        await maildrop.delete(maildrop.messages)  # deleting what is gone is not an error
        await maildrop.close()

    run(scenario())


def test_a_closed_maildrop_serves_and_deletes_nothing(backend: Backend) -> None:
    async def scenario() -> None:
        await backend.store.deliver("alice", b"kept\n")
        maildrop = await backend.store.open("alice")
        await maildrop.close()
        with pytest.raises(TemporaryFailure):
            await read_all(maildrop, maildrop.messages[0])
        with pytest.raises(TemporaryFailure):
            await maildrop.delete(maildrop.messages)
        maildrop = await backend.store.open("alice")
        assert len(maildrop.messages) == 1
        await maildrop.close()

    run(scenario())
