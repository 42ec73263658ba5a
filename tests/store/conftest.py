"""Store fixtures: every contract test runs against each backend (as aioftp's tests/conftest.py
parametrises its path-io backends), plus tiny helpers to drive coroutines without pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from tests.support.postgres import PostgresServer

from mailslot.store import expunge
from mailslot.store.base import Maildrop, MessageInfo, Store
from mailslot.store.maildir import MaildirStore
from mailslot.store.maildirnames import base_of
from mailslot.store.memory import MemoryStore
from mailslot.store.postgresql import PostgresStore, schema

T = TypeVar("T")


@contextlib.contextmanager
def directory(path: Path | str) -> Iterator[int]:
    """A descriptor of the directory ``path``, as the store's calls take them."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def read_all(maildrop: Maildrop, message: MessageInfo, chunk_size: int = 65536) -> bytes:
    return b"".join([chunk async for chunk in maildrop.read(message, chunk_size)])


@dataclass
class Backend:
    """A store under test and the one thing only a backend can do: lose a message behind
    the server's back (another program removing the file)."""

    name: str
    store: Store
    remove_behind_back: Callable[[str, str], None]
    # Make the next deletion's n-th removal (from 1) keep failing, as on EIO.
    fail_removal_at: Callable[[int], None]
    # A deletion is one transaction: a failure part-way removes nothing (PostgreSQL).
    atomic_delete: bool = False


def _maildir_backend(
    root: Path, monkeypatch: pytest.MonkeyPatch, uidl_format: str | None = None
) -> Backend:
    # With a uidl_format: unique-ids and order from dovecot-uidlist (store.dovecot).
    store = MaildirStore(str(root / "{user}" / "Maildir"), uidl_format=uidl_format)

    def fail_removal_at(n: int) -> None:
        bases: list[str] = []
        failures = []

        def unlink(name: str, *, dir_fd: int) -> None:
            base = base_of(name)
            if base not in bases:
                bases.append(base)
            # The n-th file fails at the deletion's first try and at its retry, then works.
            if bases.index(base) == n - 1 and len(failures) < 2:
                failures.append(name)
                raise OSError(errno.EIO, "Input/output error")
            os.unlink(name, dir_fd=dir_fd)

        monkeypatch.setattr(expunge, "_unlink", unlink)

    def remove(user: str, key: str) -> None:
        for sub in ("cur", "new"):
            directory = root / user / "Maildir" / sub
            for name in os.listdir(directory):
                if base_of(name) == key:
                    os.unlink(directory / name)

    return Backend("maildir" if uidl_format is None else "dovecot", store, remove, fail_removal_at)


def _memory_backend() -> Backend:
    store = MemoryStore()

    def fail_removal_at(n: int) -> None:
        store.fail_removal_at = n

    return Backend("memory", store, lambda user, key: store._remove(user, {key}), fail_removal_at)


def _postgresql_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    postgres: PostgresServer = request.getfixturevalue("postgres")
    dsn = postgres.database("contract")
    run(_upgrade(dsn))
    store = PostgresStore(dsn, pool_size=4, lease_seconds=30.0, node="contract")

    def sql(statement: str, *args: object) -> None:
        # Called from inside a test's event loop: a connection of its own, in a thread.
        async def execute() -> None:
            connection = await asyncpg.connect(dsn)
            try:
                await connection.execute(statement, *args)
            finally:
                await connection.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, execute()).result()

    def remove(user: str, key: str) -> None:
        sql(
            "DELETE FROM mailslot_messages WHERE seq = $2 AND account_id = "
            "(SELECT account_id FROM mailslot_accounts WHERE name = $1)",
            user,
            int(key.partition("/")[2]),
        )

    def fail_removal_at(n: int) -> None:
        # The n-th row the next deletion removes raises, as a failing disk would.
        sql("CREATE SEQUENCE fail_counter")
        sql(
            "CREATE FUNCTION fail_nth() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF nextval('fail_counter') = {int(n)} THEN RAISE EXCEPTION 'injected'; END IF; "
            "RETURN OLD; END $$"
        )
        sql(
            "CREATE TRIGGER fail_nth BEFORE DELETE ON mailslot_messages "
            "FOR EACH ROW EXECUTE FUNCTION fail_nth()"
        )

    yield Backend("postgresql", store, remove, fail_removal_at, atomic_delete=True)


async def _upgrade(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await schema.upgrade(connection)
    finally:
        await connection.close()


@pytest.fixture(params=["maildir", "dovecot", "memory", "postgresql"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    if request.param == "maildir":
        yield _maildir_backend(tmp_path, monkeypatch)
    elif request.param == "postgresql":
        yield from _postgresql_backend(request)
    else:
        yield _memory_backend()


@pytest.fixture
def maildir_store(tmp_path: Path) -> MaildirStore:
    return MaildirStore(str(tmp_path / "{user}" / "Maildir"))
