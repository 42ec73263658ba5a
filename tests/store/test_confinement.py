"""The Maildir store never follows a symlink below the maildrop's root (issue 15).

Each attack plants a symlink to a directory outside that holds canary files, either before
the open or, for the races, at a chosen point inside it (a wrapped step of the store), and
checks that no canary is listed, read, moved or deleted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailslot.store import confine, maildir
from mailslot.store.base import PartialDeletion, PermanentFailure, StoreError
from mailslot.store.confine import NotADirectory
from mailslot.store.maildir import MaildirStore

from .conftest import read_all, run

CANARY = b"Subject: canary\n\nsecret\n"


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    for sub in ("cur", "new", "tmp"):
        (outside / sub).mkdir(parents=True)
        (outside / sub / f"1500000000.M1P1.{sub}:2,S").write_bytes(CANARY)
    (outside / "1500000000.M1P1.top:2,S").write_bytes(CANARY)
    return outside


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def _store(tmp_path: Path) -> tuple[MaildirStore, Path, list[str]]:
    store = MaildirStore(str(tmp_path / "mail" / "{user}" / "Maildir"))
    keys = [run(store.deliver("alice", b"mine %d\n" % n)) for n in range(3)]
    return store, tmp_path / "mail" / "alice" / "Maildir", keys


def _swap_for_symlink(directory: Path, target: Path) -> Path:
    """Move ``directory`` aside and put a symlink to ``target`` in its place."""
    aside = directory.with_name(directory.name + ".real")
    directory.rename(aside)
    directory.symlink_to(target)
    return aside


def _restore(directory: Path, aside: Path) -> None:
    directory.unlink()
    aside.rename(directory)


async def _open_read_delete(store: MaildirStore) -> list[bytes]:
    maildrop = await store.open("alice")
    try:
        served = [await read_all(maildrop, m) for m in maildrop.messages]
        await maildrop.delete(maildrop.messages)
    finally:
        await maildrop.close()
    return served


def test_location_splits_off_only_the_administrators_leading_directories() -> None:
    assert confine.root_of("/var/mail/{domain}/{localpart}/Maildir") == "/var/mail/"
    assert confine.root_of("/var/mail/u-{user}") == "/var/mail/"
    assert confine.root_of("~/Maildir") == "/"
    assert confine.root_of("{home}/Maildir") == "/"
    assert confine.root_of("/srv/shared/Maildir") == "/srv/shared/"
    location = confine.locate("~/Maildir", "alice", "/home/alice/")
    assert (location.root, location.components) == ("/", ("home", "alice", "Maildir"))
    assert location.path == "/home/alice//Maildir"  # as expanded: for logs, never opened
    location = confine.locate("/var/mail/{domain}/{localpart}/./Maildir", "a@b.test", None)
    assert (location.root, location.components) == ("/var/mail/", ("b.test", "a", "Maildir"))


def test_the_component_named_in_the_error_is_escaped_for_the_log() -> None:
    error = NotADirectory("/home/al\nice\x1b[2J/Maildir")
    assert str(error) == "maildir: /home/al\\x0aice\\x1b[2J/Maildir is not a directory"


def test_a_symlinked_home_is_refused_under_a_home_template(tmp_path: Path) -> None:
    """{home} comes before any fixed directory: the home's own components are the user's."""
    outside = _outside(tmp_path)
    (tmp_path / "homes").mkdir()
    (tmp_path / "homes" / "alice").symlink_to(outside.parent)
    (outside.parent / "Maildir").symlink_to(outside)
    store = MaildirStore("~/Maildir")
    before = _files(outside)
    with pytest.raises(NotADirectory, match="homes/alice is not a directory"):
        run(store.open("alice", str(tmp_path / "homes" / "alice")))
    assert _files(outside) == before


def test_an_administrators_symlink_in_the_fixed_root_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real-mail").mkdir()
    (tmp_path / "mail").symlink_to(tmp_path / "real-mail")
    store = MaildirStore(str(tmp_path / "mail" / "{user}" / "Maildir"))
    key = run(store.deliver("alice", b"hello\n"))
    assert (tmp_path / "real-mail" / "alice" / "Maildir" / "new" / key).exists()
    assert [m.key for m in run(_opened(store))] == [key]


async def _opened(store: MaildirStore) -> Any:
    maildrop = await store.open("alice")
    await maildrop.close()
    return maildrop.messages


def _wrap(
    monkeypatch: pytest.MonkeyPatch,
    owner: Any,
    name: str,
    before: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
) -> None:
    """Run ``before``/``after`` once around the next call of ``owner.name``."""
    real = getattr(owner, name)
    done = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        first = not done
        done.append(1)
        if first and before is not None:
            before()
        result = real(*args, **kwargs)
        if first and after is not None:
            after()
        return result

    monkeypatch.setattr(owner, name, wrapped)


@pytest.mark.parametrize("inline", [True, False], ids=["on-the-loop", "in-a-thread"])
def test_cur_swapped_between_opening_the_maildir_and_listing_cur_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    store, box, _ = _store(tmp_path)
    if inline:
        run(_opened(store))  # settles new/ into cur/: the next open stays on the loop
    outside = _outside(tmp_path)
    before = _files(outside)
    _wrap(
        monkeypatch,
        maildir,
        "_subdirectories",
        before=lambda: _swap_for_symlink(box / "cur", outside / "cur"),
    )
    with pytest.raises(NotADirectory, match="Maildir/cur is not a directory"):
        run(_open_read_delete(store))
    assert _files(outside) == before


def test_cur_swapped_after_it_was_opened_lists_the_real_one_and_serves_nothing_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, box, keys = _store(tmp_path)
    run(_opened(store))  # settles new/ into cur/: the next open lists cur/ on the loop
    outside = _outside(tmp_path)
    before = _files(outside)
    aside: list[Path] = []
    _wrap(
        monkeypatch,
        maildir,
        "_subdirectories",
        after=lambda: aside.append(_swap_for_symlink(box / "cur", outside / "cur")),
    )

    async def scenario() -> None:
        maildrop = await store.open("alice")
        # The listing came from the descriptor: the real cur/, now moved aside.
        assert sorted(m.key for m in maildrop.messages) == sorted(keys)
        # Reading goes through cur/ again, which is now a symlink: refused, not followed.
        with pytest.raises(PermanentFailure, match="cur is not a directory"):
            await read_all(maildrop, maildrop.messages[0])
        # So is deleting; the journal keeps the marks for when cur/ is real again.
        with pytest.raises(PartialDeletion) as raised:
            await maildrop.delete(maildrop.messages[:2])
        assert (raised.value.deleted, raised.value.pending) == (0, True)
        await maildrop.close()

    run(scenario())
    assert _files(outside) == before
    _restore(box / "cur", aside[0])
    assert [m.key for m in run(_opened(store))] == sorted(keys)[2:]


def test_the_maildir_swapped_during_a_session_is_never_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session holds its Maildir's descriptor: a symlink put in its place later is not
    where the session reads, journals or deletes."""
    store, box, _ = _store(tmp_path)
    outside = _outside(tmp_path)
    before = _files(outside)

    async def scenario() -> None:
        maildrop = await store.open("alice")
        aside = _swap_for_symlink(box, outside)
        served = [await read_all(maildrop, m) for m in maildrop.messages]
        assert CANARY not in served
        await maildrop.delete(maildrop.messages)
        await maildrop.close()
        assert sorted(os.listdir(aside / "cur")) == []
        with pytest.raises(NotADirectory, match="alice/Maildir is not a directory"):
            await store.open("alice")

    run(scenario())
    assert _files(outside) == before


def test_a_component_swapped_mid_walk_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between opening the root and the user's directory, the user's directory becomes a
    symlink: the next step of the walk refuses it."""
    store, box, _ = _store(tmp_path)
    outside = _outside(tmp_path)
    (outside / "Maildir").symlink_to(outside)
    before = _files(outside)
    user_dir = box.parent
    _wrap(monkeypatch, confine, "_open", before=lambda: _swap_for_symlink(user_dir, outside))
    with pytest.raises(StoreError, match="alice is not a directory"):
        run(_open_read_delete(store))
    assert _files(outside) == before


@pytest.mark.parametrize("sub", ["cur", "new", "tmp"])
def test_delivery_through_a_symlinked_directory_is_refused(tmp_path: Path, sub: str) -> None:
    store, box, _ = _store(tmp_path)
    outside = _outside(tmp_path)
    before = _files(outside)
    _swap_for_symlink(box / sub, outside / sub)
    with pytest.raises(NotADirectory, match=f"Maildir/{sub} is not a directory"):
        run(store.deliver("alice", b"more\n"))
    assert _files(outside) == before
