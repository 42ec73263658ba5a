"""Store fixtures: every contract test runs against each backend (as aioftp's tests/conftest.py
parametrises its path-io backends), plus tiny helpers to drive coroutines without pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailslot.store import expunge
from mailslot.store.base import Maildrop, MessageInfo, Store
from mailslot.store.maildir import MaildirStore
from mailslot.store.maildirnames import base_of
from mailslot.store.memory import MemoryStore

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


@pytest.fixture(params=["maildir", "dovecot", "memory"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    if request.param == "maildir":
        yield _maildir_backend(tmp_path, monkeypatch)
    elif request.param == "dovecot":
        yield _maildir_backend(tmp_path, monkeypatch, "%08Xu%08Xv")
    else:
        yield _memory_backend()


@pytest.fixture
def maildir_store(tmp_path: Path) -> MaildirStore:
    return MaildirStore(str(tmp_path / "{user}" / "Maildir"))
