"""Maildir-only behaviour: paths, what is (never) listed, sizes and their cache, crash safety."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailslot.store import expunge, maildir, sizecache
from mailslot.store.base import (
    MaildropLocked,
    MessageGone,
    MessageInfo,
    PartialDeletion,
    PermanentFailure,
    TemporaryFailure,
)
from mailslot.store.maildir import MaildirStore
from mailslot.store.paths import expand

from .conftest import directory, read_all, run

SRC = str(Path(__file__).resolve().parents[2] / "src")


def put(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def snapshot(store: MaildirStore, user: str = "alice") -> list[tuple[str, str, int]]:
    async def scenario() -> list[tuple[str, str, int]]:
        maildrop = await store.open(user)
        try:
            return [(m.key, m.uid, m.size) for m in maildrop.messages]
        finally:
            await maildrop.close()

    return run(scenario())


def child(script: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


# -- paths -----------------------------------------------------------------------------------


def test_template_expands_user_parts_and_home() -> None:
    template = "/srv/{domain}/{localpart}/{user}"
    assert expand(template, "bob@example.org", None) == "/srv/example.org/bob/bob@example.org"
    assert expand(template, "bob", None) == "/srv//bob/bob"
    assert expand("/m/{localpart}", "a@b@c", None) == "/m/a@b"
    assert expand("~/Maildir", "bob", "/home/bob") == "/home/bob/Maildir"
    assert expand("{home}/mail/{user}", "bob", "/home/bob") == "/home/bob/mail/bob"


@pytest.mark.parametrize(
    ("template", "user", "home"),
    [
        ("~/Maildir", "bob", None),  # needs a home, has none
        ("{home}/Maildir", "bob", None),
        ("/m/{user}", "..", None),
        ("/m/{user}", ".", None),
        ("/m/{user}", "a/../../etc", None),
        ("/m/{user}", "a\x00b", None),
        ("/m/{localpart}", "..@example.org", None),
        ("/m/{domain}/{localpart}", "bob@..", None),
        ("~/Maildir", "bob", "/home/../etc"),
        ("~/Maildir", "bob", "relative/home"),
        ("m/{user}", "bob", None),
    ],
)
def test_unsafe_expansions_are_refused(template: str, user: str, home: str | None) -> None:
    with pytest.raises(PermanentFailure):
        expand(template, user, home)


def test_open_refuses_an_unsafe_path_without_creating_anything(tmp_path: Path) -> None:
    store = MaildirStore(str(tmp_path / "{user}" / "Maildir"))
    with pytest.raises(PermanentFailure):
        run(store.open(".."))
    assert list(tmp_path.iterdir()) == []


def test_open_creates_a_private_maildir_under_home(tmp_path: Path) -> None:
    store = MaildirStore("~/Mail/box")

    async def scenario() -> None:
        maildrop = await store.open("bob", str(tmp_path / "home" / "bob"))
        await maildrop.close()

    run(scenario())
    box = tmp_path / "home" / "bob" / "Mail" / "box"
    for path in (box / "cur", box / "new", box / "tmp", box, box.parent):
        assert path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


# -- what is listed ------------------------------------------------------------------------------


def test_only_regular_non_dot_files_in_cur_and_new_are_listed(tmp_path: Path) -> None:
    store = MaildirStore(str(tmp_path / "{user}"))
    box = tmp_path / "alice"
    run(store.deliver("alice", b"real\n"))
    secret = put(tmp_path, "secret", b"not yours\n")
    for sub in ("cur", "new"):
        os.symlink(secret, box / sub / f"1000.{sub}link")
        os.mkfifo(box / sub / f"1000.{sub}fifo")
        (box / sub / f"1000.{sub}dir").mkdir()
        put(box / sub, f".1000.{sub}dot", b"hidden\n")
    put(box / "tmp", "1000.intmp", b"half-written\n")

    async def scenario() -> None:
        maildrop = await store.open("alice")
        assert len(maildrop.messages) == 1
        assert await read_all(maildrop, maildrop.messages[0]) == b"real\n"
        await maildrop.close()

    run(scenario())
    # The odd entries stay where they were: nothing but regular files is moved to cur/.
    assert sorted(os.listdir(box / "new")) == [
        ".1000.newdot",
        "1000.newdir",
        "1000.newfifo",
        "1000.newlink",
    ]
    assert (box / "tmp" / "1000.intmp").exists()


def test_a_message_replaced_by_a_symlink_or_fifo_is_never_served(tmp_path: Path) -> None:
    store = MaildirStore(str(tmp_path / "{user}"))
    secret = put(tmp_path, "secret", b"not yours\n")
    for n in range(2):
        run(store.deliver("alice", b"mine %d\n" % n))

    async def scenario() -> None:
        maildrop = await store.open("alice")
        cur = tmp_path / "alice" / "cur"
        first, second = sorted(os.listdir(cur))
        os.unlink(cur / first)
        os.symlink(secret, cur / first)
        os.unlink(cur / second)
        os.mkfifo(cur / second)  # O_NONBLOCK: opening it must not hang
        for message in maildrop.messages:
            with pytest.raises(MessageGone):
                await read_all(maildrop, message)
        await maildrop.close()

    run(scenario())


def test_new_moves_to_cur_with_empty_info(maildir_store: MaildirStore, tmp_path: Path) -> None:
    key = run(maildir_store.deliver("alice", b"hello\n"))
    box = tmp_path / "alice" / "Maildir"
    assert os.listdir(box / "new") == [key]
    assert snapshot(maildir_store)[0][0] == key
    assert os.listdir(box / "new") == []
    assert os.listdir(box / "cur") == [key + ":2,"]


def test_read_finds_a_message_whose_flags_changed_after_open(
    maildir_store: MaildirStore, tmp_path: Path
) -> None:
    key = run(maildir_store.deliver("alice", b"flagged later\n"))
    cur = tmp_path / "alice" / "Maildir" / "cur"

    async def scenario() -> None:
        maildrop = await maildir_store.open("alice")
        os.rename(cur / (key + ":2,"), cur / (key + ":2,FS"))
        assert await read_all(maildrop, maildrop.messages[0]) == b"flagged later\n"
        await maildrop.delete(maildrop.messages)
        await maildrop.close()

    run(scenario())
    assert os.listdir(cur) == []


def test_delivered_file_is_named_with_its_sizes_and_private(
    maildir_store: MaildirStore, tmp_path: Path
) -> None:
    data = b"a\nb\r\nc"
    key = run(maildir_store.deliver("alice", data))
    assert key.endswith(f",S={len(data)},W={len(data) + 1}")
    path = tmp_path / "alice" / "Maildir" / "new" / key
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- sizes and the size cache ------------------------------------------------------------------

FOREIGN = {
    "1500000000.1234_0.oldhost:2,S": b"line one\nline two\n",
    "1500000001.M5P9.host:2,": b"crlf\r\nmixed\n",
    "1500000002.weird name with spaces:2,": b"x\n" * 1000,
    "1500000003.M1P1.host": b"no final newline",
}


def _foreign(tmp_path: Path) -> Path:
    box = tmp_path / "alice" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    for name, data in FOREIGN.items():
        put(box / ("new" if ":" not in name else "cur"), name, data)
    return box


def _expected() -> list[int]:
    return [len(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")) for data in FOREIGN.values()]


def test_foreign_files_get_wire_sizes_and_populate_the_cache(
    maildir_store: MaildirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = _foreign(tmp_path)
    first = snapshot(maildir_store)
    assert [size for _, _, size in first] == _expected()
    with directory(box) as fd:
        cached = sizecache.load(fd)
    assert set(cached) == {name.partition(":")[0] for name in FOREIGN}

    def no_reading(directory: int, name: str) -> tuple[int, int] | None:
        raise AssertionError(f"read {name} although its size is cached")

    monkeypatch.setattr(maildir, "_measure", no_reading)
    assert snapshot(maildir_store) == first


def test_a_changed_file_is_measured_again(maildir_store: MaildirStore, tmp_path: Path) -> None:
    box = _foreign(tmp_path)
    snapshot(maildir_store)
    # Maildir messages are immutable; a rewrite is noticed by its new length.
    (box / "cur" / "1500000001.M5P9.host:2,").write_bytes(b"now\nlonger\n\n\n")
    sizes = {key: size for key, _, size in snapshot(maildir_store)}
    assert sizes["1500000001.M5P9.host"] == len(b"now\r\nlonger\r\n\r\n\r\n")


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",
        lambda data: data[: len(data) // 2],
        lambda data: data.replace(b" 18 20\n", b" 18 999\n"),  # plausible but wrong: checksum
        lambda data: b"garbage\x00\xff\n" * 3,
        None,  # missing altogether
    ],
)
def test_damaged_or_missing_cache_gives_the_same_sizes_and_uids(
    maildir_store: MaildirStore, tmp_path: Path, damage: object
) -> None:
    box = _foreign(tmp_path)
    first = snapshot(maildir_store)
    cache = box / maildir.SIZE_CACHE
    if damage is None:
        cache.unlink()
    else:
        cache.write_bytes(damage(cache.read_bytes()))  # type: ignore[operator]
    assert snapshot(maildir_store) == first
    with directory(box) as fd:
        assert sizecache.load(fd) != {}  # and it was rebuilt


def test_cache_forgets_removed_messages(maildir_store: MaildirStore, tmp_path: Path) -> None:
    box = _foreign(tmp_path)
    snapshot(maildir_store)
    os.unlink(box / "cur" / "1500000000.1234_0.oldhost:2,S")
    snapshot(maildir_store)
    with directory(box) as fd:
        assert "1500000000.1234_0.oldhost" not in sizecache.load(fd)


def test_a_cr_at_the_read_boundary_is_not_counted_twice(
    maildir_store: MaildirStore, tmp_path: Path
) -> None:
    box = _foreign(tmp_path)
    data = b"a" * (maildir.READ_SIZE - 1) + b"\r\n" + b"b\n"
    put(box / "cur", "1600000000.big:2,", data)
    sizes = {key: size for key, _, size in snapshot(maildir_store)}
    assert sizes["1600000000.big"] == len(data) + 1


def test_uid_of_a_long_foreign_name_is_a_stable_digest(
    maildir_store: MaildirStore, tmp_path: Path
) -> None:
    box = _foreign(tmp_path)
    put(box / "cur", "1600000000." + "x" * 80 + ":2,", b"long\n")
    first = snapshot(maildir_store)
    uids = {key: uid for key, uid, _ in first}
    assert uids["1600000000." + "x" * 80].startswith("H")
    assert uids["1500000002.weird name with spaces"].startswith("H")
    os.unlink(box / maildir.SIZE_CACHE)
    assert snapshot(maildir_store) == first


# -- deletion and its crash safety ----------------------------------------------------------------


def _deliver_many(store: MaildirStore, count: int) -> list[str]:
    return [run(store.deliver("alice", b"message %d\n" % n)) for n in range(count)]


def _keys_on_disk(box: Path) -> set[str]:
    return {name.partition(":")[0] for sub in ("cur", "new") for name in os.listdir(box / sub)}


def test_journal_left_by_a_crash_is_finished_at_next_open(
    maildir_store: MaildirStore, tmp_path: Path
) -> None:
    keys = _deliver_many(maildir_store, 5)
    box = tmp_path / "alice" / "Maildir"
    snapshot(maildir_store)  # move them to cur/ as a session would have
    # The crash: the journal is durable, no file has been unlinked yet.
    with directory(box) as fd:
        expunge.write(fd, [keys[1], keys[3]], os.fsync)
    assert [key for key, _, _ in snapshot(maildir_store)] == [keys[0], keys[2], keys[4]]
    assert _keys_on_disk(box) == {keys[0], keys[2], keys[4]}
    assert not (box / expunge.JOURNAL).exists()


def test_crash_in_the_middle_of_unlinking_completes_at_next_open(
    maildir_store: MaildirStore, tmp_path: Path
) -> None:
    keys = _deliver_many(maildir_store, 6)
    box = tmp_path / "alice" / "Maildir"
    marked = [keys[0], keys[2], keys[5]]
    # The child process dies (os._exit, no cleanup at all) right after its first unlink.
    process = child(
        f"""
        import asyncio, os
        from mailslot.store import expunge
        from mailslot.store.maildir import MaildirStore
        real_unlink = os.unlink
        def crash_after_one(path, *args, **kwargs):
            real_unlink(path, *args, **kwargs)
            os._exit(17)
        async def main():
            store = MaildirStore({str(tmp_path / "{user}" / "Maildir")!r})
            maildrop = await store.open("alice")
            marked = [m for m in maildrop.messages if m.key in {marked!r}]
            expunge._unlink = crash_after_one
            await maildrop.delete(marked)
        asyncio.run(main())
        """
    )
    assert process.wait() == 17
    assert (box / expunge.JOURNAL).exists()
    assert len(_keys_on_disk(box)) == 5  # the crash happened half-way
    assert [key for key, _, _ in snapshot(maildir_store)] == [keys[1], keys[3], keys[4]]
    assert _keys_on_disk(box) == {keys[1], keys[3], keys[4]}


def test_crash_before_the_journal_is_in_place_deletes_nothing(
    maildir_store: MaildirStore, tmp_path: Path
) -> None:
    keys = _deliver_many(maildir_store, 3)
    box = tmp_path / "alice" / "Maildir"
    # A journal written to its temporary name but never renamed: the commit did not happen.
    (box / (expunge.JOURNAL + ".tmp")).write_text(json.dumps({"version": 1, "keys": keys}))
    assert [key for key, _, _ in snapshot(maildir_store)] == keys
    assert not (box / (expunge.JOURNAL + ".tmp")).exists()


def test_a_damaged_journal_deletes_nothing(maildir_store: MaildirStore, tmp_path: Path) -> None:
    keys = _deliver_many(maildir_store, 3)
    box = tmp_path / "alice" / "Maildir"
    (box / expunge.JOURNAL).write_bytes(b'{"version": 1, "keys": ["' + keys[0].encode())
    assert [key for key, _, _ in snapshot(maildir_store)] == keys
    assert (box / (expunge.JOURNAL + ".damaged")).exists()


def _failing_fsync(after: int, error: int = errno.EIO) -> Callable[[int], None]:
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(error, os.strerror(error))
        os.fsync(fd)

    return fsync


@pytest.mark.parametrize("failing_call", [0, 1], ids=["journal-fsync", "directory-fsync"])
def test_delete_that_cannot_write_its_journal_deletes_nothing(
    tmp_path: Path, failing_call: int
) -> None:
    template = str(tmp_path / "{user}")
    keys = _deliver_many(MaildirStore(template), 3)
    store = MaildirStore(template, fsync=_failing_fsync(failing_call))

    async def scenario() -> None:
        maildrop = await store.open("alice")
        with pytest.raises(TemporaryFailure) as raised:
            await maildrop.delete(maildrop.messages[:2])
        assert not isinstance(raised.value, PartialDeletion)  # i.e. nothing was deleted
        await maildrop.close()

    run(scenario())
    assert _keys_on_disk(tmp_path / "alice") == set(keys)
    assert not (tmp_path / "alice" / expunge.JOURNAL).exists()
    assert len(snapshot(MaildirStore(template))) == 3


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("failing_call", [0, 1], ids=["journal-fsync", "directory-fsync"])
def test_a_full_disk_deletes_without_a_journal(
    tmp_path: Path, failing_call: int, error: int
) -> None:
    """The journal needs room a full disk lacks; the deletion that frees room goes ahead."""
    template = str(tmp_path / "{user}")
    keys = _deliver_many(MaildirStore(template), 3)
    calls = {"n": 0}

    def fsync(fd: int) -> None:  # only the journal's fsyncs fail, as on a full disk
        calls["n"] += 1
        if calls["n"] == failing_call + 1:
            raise OSError(error, os.strerror(error))
        os.fsync(fd)

    store = MaildirStore(template, fsync=fsync)

    async def scenario() -> None:
        maildrop = await store.open("alice")
        await maildrop.delete(maildrop.messages[:2])
        await maildrop.close()

    run(scenario())
    assert _keys_on_disk(tmp_path / "alice") == {keys[2]}
    assert not (tmp_path / "alice" / expunge.JOURNAL).exists()


def test_a_failing_directory_fsync_after_the_journal_still_completes(tmp_path: Path) -> None:
    """Once the journal is durable and every file unlinked, the messages are gone for good:
    a failing fsync of cur/ leaves the journal to replay, and QUIT may say +OK."""
    template = str(tmp_path / "{user}")
    keys = _deliver_many(MaildirStore(template), 3)
    # fsyncs 1 and 2 write the journal durably; the third (of cur/) fails, as on EIO.
    store = MaildirStore(template, fsync=_failing_fsync(2))

    async def scenario() -> None:
        maildrop = await store.open("alice")
        await maildrop.delete(maildrop.messages[:2])
        await maildrop.close()

    run(scenario())
    assert (tmp_path / "alice" / expunge.JOURNAL).exists()
    assert _keys_on_disk(tmp_path / "alice") == {keys[2]}
    assert [key for key, _, _ in snapshot(MaildirStore(template))] == [keys[2]]
    assert not (tmp_path / "alice" / expunge.JOURNAL).exists()


def _failing_unlink(fail: Callable[[int], bool]) -> Callable[..., None]:
    """os.unlink whose ``n``-th call (from 1) raises EIO where ``fail(n)``."""
    calls = {"n": 0}

    def unlink(name: str, *, dir_fd: int) -> None:
        calls["n"] += 1
        if fail(calls["n"]):
            raise OSError(errno.EIO, "Input/output error")
        os.unlink(name, dir_fd=dir_fd)

    return unlink


def test_an_unlink_that_fails_then_succeeds_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = str(tmp_path / "{user}")
    keys = _deliver_many(MaildirStore(template), 3)
    monkeypatch.setattr(expunge, "_unlink", _failing_unlink(lambda n: n == 2))
    store = MaildirStore(template)

    async def scenario() -> None:
        maildrop = await store.open("alice")
        await maildrop.delete(maildrop.messages)  # the second fails once, then goes
        await maildrop.close()

    run(scenario())
    assert _keys_on_disk(tmp_path / "alice") == set()
    assert keys and not (tmp_path / "alice" / expunge.JOURNAL).exists()


def test_an_unlink_that_keeps_failing_reports_how_many_went_and_finishes_at_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = str(tmp_path / "{user}")
    keys = _deliver_many(MaildirStore(template), 4)
    box = tmp_path / "alice"
    store = MaildirStore(template)
    # The second message's file cannot be unlinked now (EIO), nor when retried.

    def unlink(name: str, *, dir_fd: int) -> None:
        if name.startswith(keys[1]):
            raise OSError(errno.EIO, "Input/output error")
        os.unlink(name, dir_fd=dir_fd)

    async def scenario() -> None:
        maildrop = await store.open("alice")
        monkeypatch.setattr(expunge, "_unlink", unlink)
        with pytest.raises(PartialDeletion) as raised:
            await maildrop.delete(maildrop.messages[:3])
        assert (raised.value.deleted, raised.value.pending) == (2, True)
        await maildrop.close()

    run(scenario())
    assert _keys_on_disk(box) == {keys[1], keys[3]}
    assert (box / expunge.JOURNAL).exists()
    # The disk recovers: the next open removes the rest before it lists anything.
    monkeypatch.setattr(expunge, "_unlink", os.unlink)
    assert [key for key, _, _ in snapshot(store)] == [keys[3]]
    assert _keys_on_disk(box) == {keys[3]}
    assert not (box / expunge.JOURNAL).exists()


def test_a_journal_that_still_cannot_finish_refuses_the_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing the maildrop with a journaled message would resurrect it: the open waits."""
    template = str(tmp_path / "{user}")
    keys = _deliver_many(MaildirStore(template), 2)
    snapshot(MaildirStore(template))
    with directory(tmp_path / "alice") as fd:
        expunge.write(fd, [keys[0]], os.fsync)
    monkeypatch.setattr(expunge, "_unlink", _failing_unlink(lambda n: True))
    with pytest.raises(TemporaryFailure):
        snapshot(MaildirStore(template))
    monkeypatch.setattr(expunge, "_unlink", os.unlink)
    assert [key for key, _, _ in snapshot(MaildirStore(template))] == [keys[1]]


# -- the lock ------------------------------------------------------------------------------


def test_lock_of_a_killed_process_does_not_block(tmp_path: Path) -> None:
    template = str(tmp_path / "{user}")
    store = MaildirStore(template)
    process = child(
        f"""
        import asyncio, sys
        from mailslot.store.maildir import MaildirStore
        async def main():
            await MaildirStore({template!r}).open("alice")
            print("locked", flush=True)
            sys.stdin.readline()  # hold the lock until killed
        asyncio.run(main())
        """
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(MaildropLocked):
            run(store.open("alice"))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert snapshot(store) == []


# -- delivery --------------------------------------------------------------------------------


@pytest.mark.parametrize("failing_call", [0, 1], ids=["file-fsync", "directory-fsync"])
def test_delivery_on_a_full_disk_fails_temporarily_and_leaves_nothing(
    tmp_path: Path, failing_call: int
) -> None:
    store = MaildirStore(str(tmp_path / "{user}"), fsync=_failing_fsync(failing_call))
    with pytest.raises(TemporaryFailure):
        run(store.deliver("alice", b"will not fit\n"))
    box = tmp_path / "alice"
    assert os.listdir(box / "tmp") == []
    assert os.listdir(box / "new") == []
    assert os.listdir(box / "cur") == []


# -- odd names, measured sizes, cancellation --------------------------------------------------


@settings(
    max_examples=30,
    deadline=None,
    # A fresh Maildir per example; the fixtures only provide the temporary root.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"x", b"."])).map(b"".join))
def test_measured_size_of_a_foreign_file_matches_for_any_chunking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    monkeypatch.setattr(maildir, "READ_SIZE", 3)  # CRs land on chunk boundaries
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    store = MaildirStore(str(root / "{user}"))
    box = root / "alice"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    put(box / "cur", "1600000000.foreign:2,", data)
    ((_, _, size),) = snapshot(store)
    assert size == len(re.sub(rb"(?<!\r)\n", b"\r\n", data))


def test_names_that_are_not_utf8_or_valid_uids_are_listed_and_deleted(
    maildir_store: MaildirStore, tmp_path: Path
) -> None:
    box = _foreign(tmp_path)
    odd = os.fsdecode(b"1600000000.caf\xe9 host:2,")
    put(box / "cur", odd, b"latin-1 name\n")
    first = snapshot(maildir_store)
    key = odd.partition(":")[0]
    uids = {k: uid for k, uid, _ in first}
    assert uids[key].startswith("H")

    async def scenario() -> None:
        maildrop = await maildir_store.open("alice")
        message = next(m for m in maildrop.messages if m.key == key)
        assert await read_all(maildrop, message) == b"latin-1 name\n"
        await maildrop.delete([message])
        await maildrop.close()

    run(scenario())
    assert [k for k, _, _ in snapshot(maildir_store)] == [k for k, _, _ in first if k != key]


def test_a_cancelled_open_does_not_keep_the_lock(tmp_path: Path) -> None:
    template = str(tmp_path / "{user}")
    keys = _deliver_many(MaildirStore(template), 2)
    box = tmp_path / "alice"
    # A pending journal makes open() fsync, which lets the test hold it inside the worker.
    with directory(box) as fd:
        expunge.write(fd, [keys[0]], os.fsync)
    entered, release = threading.Event(), threading.Event()

    def held_fsync(fd: int) -> None:
        entered.set()
        release.wait()
        os.fsync(fd)

    store = MaildirStore(template, fsync=held_fsync)

    async def scenario() -> None:
        # One worker thread: the second open below runs only once the first has finished.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        opening = asyncio.ensure_future(store.open("alice"))
        with ThreadPoolExecutor(max_workers=1) as waiter:
            await asyncio.get_running_loop().run_in_executor(waiter, entered.wait)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        release.set()
        # A small maildrop is opened on the loop, not queued behind the worker: wait for the
        # worker (the one thread) to finish the cancelled open before opening again.
        await asyncio.to_thread(lambda: None)
        maildrop = await MaildirStore(template).open("alice")
        assert [m.key for m in maildrop.messages] == [keys[1]]
        await maildrop.close()

    run(scenario())


def test_an_open_cancelled_while_queued_for_a_worker_does_not_keep_the_lock(
    tmp_path: Path,
) -> None:
    """The quick open took the lock and fell through to a worker thread, but every worker
    was busy and the login was cancelled before one started it: the lock is released."""
    template = str(tmp_path / "{user}")
    keys = _deliver_many(MaildirStore(template), 2)
    with directory(tmp_path / "alice") as fd:
        expunge.write(fd, [keys[0]], os.fsync)  # a journal sends the open to a thread
    store = MaildirStore(template)

    async def scenario() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        busy, release = threading.Event(), threading.Event()

        def occupy() -> None:
            busy.set()
            release.wait()

        occupied = asyncio.ensure_future(asyncio.to_thread(occupy))
        with ThreadPoolExecutor(max_workers=1) as waiter:
            await asyncio.get_running_loop().run_in_executor(waiter, busy.wait)
        opening = asyncio.ensure_future(store.open("alice"))
        await asyncio.sleep(0)  # the quick open runs, takes the lock, queues for the worker
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        release.set()
        await occupied
        maildrop = await MaildirStore(template).open("alice")
        assert [m.key for m in maildrop.messages] == [keys[1]]
        await maildrop.close()

    run(scenario())


# -- where open() runs ---------------------------------------------------------------------------


class _CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        self.submitted += 1
        return super().submit(*args, **kwargs)  # type: ignore[arg-type]


def _open_counting(store: MaildirStore) -> tuple[int, list[tuple[str, int]]]:
    """Open alice's maildrop; return how many jobs went to a thread, and (key, size) pairs."""

    async def scenario() -> tuple[int, list[tuple[str, int]]]:
        executor = _CountingExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        maildrop = await store.open("alice")
        listed = [(m.key, m.size) for m in maildrop.messages]
        await maildrop.close()
        return executor.submitted, listed

    return run(scenario())


def test_a_small_settled_maildrop_opens_on_the_loop(tmp_path: Path) -> None:
    store = MaildirStore(str(tmp_path / "{user}"))
    keys = _deliver_many(store, 3)
    # The first open moves new/ to cur/: that is work for a thread.
    threads, first = _open_counting(store)
    assert threads == 1
    threads, second = _open_counting(store)
    assert threads == 0
    assert second == first and [key for key, _ in second] == keys


@pytest.mark.parametrize("case", ["too many", "in new", "no W=", "journal", "no cur"])
def test_blocking_work_still_goes_to_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    store = MaildirStore(str(tmp_path / "{user}"))
    keys = _deliver_many(store, 3)
    box = tmp_path / "alice"
    assert _open_counting(store)[0] == 1  # settles new/ into cur/
    expected = [(key, len(b"message 0\r\n")) for key in keys]
    if case == "too many":
        monkeypatch.setattr(maildir, "INLINE_LIMIT", 2)
    elif case == "in new":
        expected.append((run(store.deliver("alice", b"message 3\n")), 11))
    elif case == "no W=":
        put(box / "cur", "1900000000.M1P1.foreign:2,", b"foreign\n")
        expected.append(("1900000000.M1P1.foreign", 9))
    elif case == "journal":
        with directory(box) as fd:
            expunge.write(fd, [keys[0]], os.fsync)
        del expected[0]
    else:
        for name in os.listdir(box / "cur"):
            os.rename(box / "cur" / name, box / "new" / name)
        os.rmdir(box / "cur")
    threads, listed = _open_counting(store)
    assert threads == 1
    assert listed == expected
    assert (box / "cur").is_dir() and not (box / (expunge.JOURNAL + ".tmp")).exists()


def test_a_stale_journal_tmp_opens_on_the_loop_and_deletes_nothing(tmp_path: Path) -> None:
    store = MaildirStore(str(tmp_path / "{user}"))
    keys = _deliver_many(store, 3)
    box = tmp_path / "alice"
    assert _open_counting(store)[0] == 1  # settles new/ into cur/
    # A crash before the rename: the deletion never became durable, so nothing goes.
    put(box, expunge.JOURNAL + ".tmp", json.dumps({"version": 1, "keys": keys}).encode())
    threads, listed = _open_counting(store)
    assert threads == 0 and [key for key, _ in listed] == keys

    async def delete_first() -> None:
        maildrop = await store.open("alice")
        await maildrop.delete([maildrop.messages[0]])
        await maildrop.close()

    run(delete_first())  # the next journal write replaces the stale one
    assert [key for key, _ in _open_counting(store)[1]] == keys[1:]
    assert not (box / (expunge.JOURNAL + ".tmp")).exists()


def test_a_new_users_maildir_is_made_in_a_thread(tmp_path: Path) -> None:
    store = MaildirStore(str(tmp_path / "{user}"))
    assert _open_counting(store) == (1, [])
    assert (tmp_path / "alice" / "tmp").is_dir()


# -- reused snapshots ----------------------------------------------------------------------------


def _mutations(box: Path, secret: Path) -> list[Callable[[], object]]:
    """Changes other programs make to a Maildir behind the server's back."""
    cur = box / "cur"

    def first() -> str:
        return sorted(os.listdir(cur))[0]

    def to_symlink() -> None:
        name = first()
        os.unlink(cur / name)
        os.symlink(secret, cur / name)

    return [
        lambda: os.rename(cur / first(), cur / (first().partition(":")[0] + ":2,S")),
        lambda: put(cur, "1500000000.M1P1.other,S=3,W=4:2,", b"ab\n"),
        lambda: os.unlink(cur / first()),
        lambda: put(box / "new", "1900000000.M1P1.late,S=2,W=3", b"z\n"),
        lambda: put(cur, "1500000001.M1P1.foreign:2,", b"no size in the name\n"),
        lambda: os.unlink(cur / "1500000001.M1P1.foreign:2,"),
        to_symlink,
        lambda: os.mkfifo(cur / "1500000002.M1P1.fifo,W=1:2,"),
        lambda: put(cur, ".1500000003.M1P1.dot,W=1:2,", b"hidden\n"),
        lambda: put(cur, first().partition(":")[0] + ":2,T", b"same base, flags set twice\n"),
        lambda: None,
    ]


def _settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the store take every directory as settled, as if its times were old."""
    monkeypatch.setattr(maildir, "_now", lambda: time.time_ns() + 10 * maildir.SETTLED_NS)


# The longest tick of the kernel's clock for inode times (HZ=100): a change made this long
# after another gives the directory other times, which the settled window stands in for.
_TICK = 0.011


@pytest.mark.parametrize("settled", [False, True], ids=["listed", "settled"])
@pytest.mark.parametrize("count", [3, maildir.INLINE_LIMIT + 1], ids=["loop", "thread"])
def test_a_reused_snapshot_is_what_a_fresh_one_would_be(
    tmp_path: Path, count: int, settled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(str(tmp_path / "{user}"))
    fresh = MaildirStore(str(tmp_path / "{user}"), snapshot_budget=0)
    _deliver_many(store, count)
    secret = put(tmp_path, "secret", b"not yours\n")
    box = tmp_path / "alice"
    if settled:
        _settle(monkeypatch)
    snapshot(store)
    for mutate in _mutations(box, secret):
        time.sleep(_TICK)
        mutate()
        assert snapshot(store) == snapshot(fresh)
        assert snapshot(store) == snapshot(fresh)  # once more, reused


@pytest.mark.parametrize("settled", [False, True], ids=["young", "settled"])
def test_settled_directories_are_not_listed_again_until_they_change(
    tmp_path: Path, settled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(str(tmp_path / "{user}"))
    _deliver_many(store, 3)
    snapshot(store)  # moves new/ into cur/
    listed: list[str] = []
    real_scan = maildir._scan

    inodes = {(tmp_path / "alice" / sub).stat().st_ino: sub for sub in ("new", "cur")}

    def scan(directory: int, limit: int | None = None) -> list[str]:
        listed.append(inodes[os.fstat(directory).st_ino])
        return real_scan(directory, limit)

    monkeypatch.setattr(maildir, "_scan", scan)
    if settled:
        _settle(monkeypatch)
    first = snapshot(store)
    assert listed == ["new", "cur"]
    assert snapshot(store) == first
    # Directories changed within the last second prove nothing: listed at every open.
    assert listed == (["new", "cur"] if settled else ["new", "cur"] * 2)
    time.sleep(_TICK)
    put(tmp_path / "alice" / "new", "1900000000.M1P1.late,S=2,W=3", b"z\n")
    assert len(snapshot(store)) == 4
    assert listed[-2:] == ["new", "cur"]


def test_an_unchanged_maildrop_shares_its_snapshot_but_not_its_locations(tmp_path: Path) -> None:
    _deliver_many(MaildirStore(str(tmp_path / "{user}")), 3)
    store = MaildirStore(str(tmp_path / "{user}"))
    box = tmp_path / "alice"
    # Moves new/ to cur/; the first session below takes the snapshot, the second reuses it.
    key = snapshot(MaildirStore(str(tmp_path / "{user}"), snapshot_budget=0))[0][0]
    name = next(n for n in os.listdir(box / "cur") if n.startswith(key))

    async def session() -> Sequence[MessageInfo]:
        maildrop = await store.open("alice")
        assert isinstance(maildrop, maildir.MaildirMaildrop)
        assert maildrop._locations[key] == name  # not an earlier session's lookup
        # Another program sets a flag: this session finds the file under its new name.
        os.rename(box / "cur" / name, box / "cur" / (name + "S"))
        assert await read_all(maildrop, maildrop.messages[0]) == b"message 0\n"
        os.rename(box / "cur" / (name + "S"), box / "cur" / name)
        await maildrop.close()
        return maildrop.messages

    first = run(session())
    assert run(session()) is first  # reused, not rebuilt
    assert run(session()) is first


def test_a_cached_snapshot_keeps_a_list_of_names_only_when_two_share_a_base(
    tmp_path: Path,
) -> None:
    store = MaildirStore(str(tmp_path / "{user}"))
    _deliver_many(store, 3)
    box = tmp_path / "alice"
    snapshot(store)  # moves new/ into cur/; the next open lists cur/ alone and caches that
    snapshot(store)
    assert store._snapshots is not None
    cached = store._snapshots._entries[str(box)]
    # The locations hold the names, in the order cur/ listed them: no second list.
    assert cached.names is None
    with directory(box / "cur") as cur:
        assert cached.listing() == maildir._scan(cur)
        assert store._snapshots.get(str(box), maildir._scan(cur)) is cached

    time.sleep(_TICK)
    name = sorted(os.listdir(box / "cur"))[0]
    put(box / "cur", name.partition(":")[0] + ":2,T", b"same base, flags set twice\n")
    snapshot(store)
    cached = store._snapshots._entries[str(box)]
    assert len(cached.locations) == 3
    with directory(box / "cur") as cur:
        assert cached.names == cached.listing() == maildir._scan(cur)
    assert cached.count() == 4


def test_reused_snapshots_stay_within_their_budget() -> None:
    snapshots = maildir.Snapshots(budget=10)

    def entry(count: int) -> maildir._Snapshot:
        return maildir._Snapshot([f"{n}" for n in range(count)], (), {})

    snapshots.put("/a", entry(4))
    snapshots.put("/b", entry(4))
    assert snapshots.get("/a", [f"{n}" for n in range(4)]) is not None  # now most recent
    snapshots.put("/c", entry(4))  # 15 > 10: the least recently used (/b) goes
    assert snapshots.get("/b", [f"{n}" for n in range(4)]) is None
    assert snapshots.get("/a", [f"{n}" for n in range(4)]) is not None
    assert snapshots.get("/a", ["0", "1", "2"]) is None  # another listing is never reused
    snapshots.put("/a", entry(10))  # more than the budget: not kept, and no stale one either
    assert snapshots.get("/a", [f"{n}" for n in range(4)]) is None
    assert snapshots.get("/a", [f"{n}" for n in range(10)]) is None


def test_a_large_snapshot_pauses_the_collector_and_restores_it(tmp_path: Path) -> None:
    box = tmp_path / "alice"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    for n in range(maildir.INLINE_LIMIT + 1):
        put(box / "cur", f"{1_600_000_000 + n}.M{n}P1.host,S=2,W=3:2,", b"x\n")
    states: list[bool] = []
    real = maildir.MessageInfo

    def spy(key: str, uid: str, size: int) -> MessageInfo:
        states.append(gc.isenabled())
        return real(key, uid, size)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(maildir, "MessageInfo", spy)
        store = MaildirStore(str(tmp_path / "{user}"), snapshot_budget=0)
        assert gc.isenabled()
        assert len(snapshot(store)) == maildir.INLINE_LIMIT + 1
        assert gc.isenabled() and states and not any(states)
        gc.disable()
        try:
            snapshot(store)  # a collector the application turned off stays off
            assert not gc.isenabled()
        finally:
            gc.enable()


def test_overlapping_collector_pauses_restore_it_after_the_last() -> None:
    assert gc.isenabled()
    first = maildir._gc_paused()
    second = maildir._gc_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the other snapshot is still being built
    with pytest.raises(RuntimeError), maildir._gc_paused():
        raise RuntimeError
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()
