"""ObservedStore and ObservedAuthenticator: every backend failure is reported once and
re-raised unchanged; what a client causes (a wrong password, a maildrop in use, a message
another client deleted) is not a failure.  With metrics off the backends are not wrapped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailslot.auth.base import AuthenticationFailed, TemporaryAuthFailure, User
from mailslot.auth.memory import MemoryAuthenticator
from mailslot.metrics import Metrics, ObservedAuthenticator, ObservedStore
from mailslot.store.base import MaildropLocked, MessageGone, StoreError, TemporaryFailure
from mailslot.store.memory import MemoryStore


class Recorder(Metrics):
    __slots__ = ("auth", "store")

    def __init__(self) -> None:
        self.store: list[str] = []
        self.auth = 0

    def store_error(self, operation: str) -> None:
        self.store.append(operation)

    def auth_error(self) -> None:
        self.auth += 1


class Unavailable:
    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        raise TemporaryAuthFailure("database down")

    async def lookup(self, username: str) -> User | None:
        raise TemporaryAuthFailure("database down")


async def read_all(store: ObservedStore, user: str) -> bytes:
    maildrop = await store.open(user)
    try:
        return b"".join([chunk async for chunk in maildrop.read(maildrop.messages[0])])
    finally:
        await maildrop.close()


def test_store_failures_are_reported_by_operation_and_reraised() -> None:
    memory = MemoryStore()
    memory.put("alice", b"Subject: x\n\nbody\n")
    recorder = Recorder()
    store = ObservedStore(memory, recorder)

    async def scenario() -> None:
        assert await read_all(store, "alice") == b"Subject: x\n\nbody\n"
        for operation in ("open", "read"):
            memory.fail[operation] = TemporaryFailure("disk")
            with pytest.raises(TemporaryFailure):
                await read_all(store, "alice")
        maildrop = await store.open("alice")
        memory.fail["delete"] = TemporaryFailure("disk")
        with pytest.raises(StoreError):
            await maildrop.delete(maildrop.messages)
        # The client's doing, not the store's failure:
        with pytest.raises(MaildropLocked):
            await store.open("alice")
        memory.fail["read"] = MessageGone("deleted by another client")
        with pytest.raises(MessageGone):
            await anext(maildrop.read(maildrop.messages[0]))
        await maildrop.close()

    asyncio.run(scenario())
    assert recorder.store == ["open", "read", "delete"]


def test_an_unavailable_user_database_is_reported_a_wrong_password_is_not() -> None:
    recorder = Recorder()
    users = ObservedAuthenticator(MemoryAuthenticator({"alice": "secret"}), recorder)
    down = ObservedAuthenticator(Unavailable(), recorder)

    async def scenario() -> None:
        assert (await users.authenticate("alice", "secret")).name == "alice"
        with pytest.raises(AuthenticationFailed):
            await users.authenticate("alice", "wrong")
        with pytest.raises(TemporaryAuthFailure):
            await down.authenticate("alice", "secret")
        with pytest.raises(TemporaryAuthFailure):
            await down.lookup("alice")

    asyncio.run(scenario())
    assert recorder.auth == 2


def test_with_metrics_off_the_backends_are_the_session_s_own() -> None:
    store, users = MemoryStore(), MemoryAuthenticator({})
    assert Metrics().observe_store(store) is store
    assert Metrics().observe_users(users) is users


def test_seen_flags_pass_through_an_observed_maildir(tmp_path: Path) -> None:
    """With metrics on the session's maildrop is an ObservedMaildrop: RETR's \\Seen (and
    RSET's taking it back) must still reach the Maildir underneath."""
    from mailslot.store.base import SeenFlags
    from mailslot.store.maildir import MaildirStore

    cur = tmp_path / "alice" / "Maildir" / "cur"
    cur.mkdir(parents=True)
    for n in (1, 2):
        (cur / f"170000000{n}.M{n}P1.host:2,").write_bytes(b"Subject: x\n\nbody\n")
    store = ObservedStore(MaildirStore(str(tmp_path / "{user}" / "Maildir")), Recorder())

    async def scenario() -> None:
        maildrop = await store.open("alice")
        assert isinstance(maildrop, SeenFlags)
        first, second = maildrop.messages
        maildrop.retrieved(first)
        maildrop.forget_retrieved()  # RSET
        maildrop.retrieved(second)
        await maildrop.close()

    asyncio.run(scenario())
    assert sorted(p.name for p in cur.iterdir()) == [
        "1700000001.M1P1.host:2,",
        "1700000002.M2P1.host:2,S",
    ]


def test_the_login_source_wish_passes_through() -> None:
    """The session gives the login's addresses only to a backend that asks for them
    (auth.base.login_source); wrapped for metrics, the Dovecot backend still asks."""
    from mailslot.auth.dovecot import DovecotAuthenticator

    dovecot = ObservedAuthenticator(DovecotAuthenticator(Path("/nonexistent")), Recorder())
    assert dovecot.uses_login_source
    assert not ObservedAuthenticator(MemoryAuthenticator({}), Recorder()).uses_login_source
