"""dovecot-uidlist, pop3_uidl_format and \\Seen flags in the Maildir store, without a Dovecot.

tests/integration/test_dovecot_uidlist.py compares the same behaviour with a real Dovecot;
these pin the parts a real Dovecot cannot easily be made to show: stale and live locks,
corrupt files, a uidlist rewritten behind a cached snapshot, owners, the quick path.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailslot.store import dovecot, maildir
from mailslot.store.base import MaildropLocked, MessageInfo, PartialDeletion, TemporaryFailure
from mailslot.store.dovecotformat import UidlFormat
from mailslot.store.maildir import MaildirStore

from .conftest import directory, read_all, run

BASES = [f"16500000{i:02d}.M{i}P1.host,S=10,W=11" for i in range(1, 4)]


def _store(tmp_path: Path, fmt: str | None = "%08Xu%08Xv", **options: object) -> MaildirStore:
    return MaildirStore(str(tmp_path / "{user}" / "Maildir"), uidl_format=fmt, **options)  # type: ignore[arg-type]


def _maildir(tmp_path: Path, bases: list[str] = BASES, sub: str = "cur") -> Path:
    box = tmp_path / "alice" / "Maildir"
    for name in ("cur", "new", "tmp"):
        (box / name).mkdir(parents=True, exist_ok=True)
    for base in bases:
        (box / sub / (base + (":2," if sub == "cur" else ""))).write_bytes(b"Subject: x\n\nbody\n")
    return box


def _uids(store: MaildirStore) -> list[tuple[str, str]]:
    async def scenario() -> list[tuple[str, str]]:
        maildrop = await store.open("alice")
        try:
            return [(m.key, m.uid) for m in maildrop.messages]
        finally:
            await maildrop.close()

    return run(scenario())


# --------------------------------------------------------------------------- the format


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("%08Xu%08Xv", "0000002a499602d2"),
        ("%u%v", "421234567890"),
        ("%f", "1650000001.M1P1.host,S=10,W=11"),
        ("%g", "guid-from-uidlist"),
        ("%{uid}-%{uidvalidity}", "42-1234567890"),
        ("%Xu", "2a"),
        ("%4u", "42"),  # a width truncates, it does not pad
        ("%04u", "0042"),
        ("%02v", "1234567890"),  # zero padding never truncates
        ("%.3f", "165"),  # [offset.]width: no offset, width 3
        ("%3.5f", "00000"),  # an offset skips
        ("%-4.3f", "W=1"),  # a negative offset counts from the end, then the width
        ("%Uf", "1650000001.M1P1.HOST,S=10,W=11"),
        ("%Rv", "0987654321"),
        ("%Mu", "a1d0c6e83f027327d8461063f4ac58a6"),
        ("%%u%u", "%u42"),
        ("x-%u", "x-42"),
    ],
)
def test_format_expands_as_dovecot_var_expand(fmt: str, expected: str) -> None:
    value = UidlFormat(fmt).expand(42, 1234567890, BASES[0], "guid-from-uidlist")
    assert value == expected
    # The template made for a whole listing gives the same.
    extensions = {BASES[0]: {"G": "guid-from-uidlist"}}
    assert UidlFormat(fmt).expand_all([42], 1234567890, [BASES[0]], extensions) == [expected]


@pytest.mark.parametrize("fmt", ["", "%m", "%{md5}", "%q", "%{nope}", "%08X", "%Hu", "%{uid"])
def test_unsupported_formats_are_refused(fmt: str) -> None:
    with pytest.raises(ValueError):
        UidlFormat(fmt)


# --------------------------------------------------------------------------- the file


def test_parse_version_3_with_extensions_and_render_round_trip() -> None:
    data = (
        b"3 V1234 N10 G0123456789abcdef0123456789abcdef Xother\n"
        b"1 W100 Psaved :a,S=1\n"
        b"3 P :b\n"
        b"7 O2 Gguid :c\n"
    )
    uidlist = dovecot.parse(data)
    assert (uidlist.uidvalidity, uidlist.next_uid, uidlist.header_rest) == (1234, 10, "Xother")
    assert uidlist.uids == {"a,S=1": 1, "b": 3, "c": 7}
    assert uidlist.extensions == {
        "a,S=1": {"W": "100", "P": "saved"},
        "b": {"P": ""},
        "c": {"O": "2", "G": "guid"},
    }
    again = dovecot.parse(uidlist.render())
    assert (again.uids, again.extensions) == (uidlist.uids, uidlist.extensions)


def test_records_appended_in_place_are_read_alone(tmp_path: Path) -> None:
    """Dovecot appends new records to the same file; only those are parsed again, and the
    result is what reading the whole file gives.  A partly written last line waits."""
    path = tmp_path / "dovecot-uidlist"
    path.write_bytes(b"3 V5 N3 G" + b"0" * 32 + b"\n1 :a\n2 Pp :b\n")
    with directory(tmp_path) as fd:
        first = dovecot.read(fd)
        assert first is not None
        with path.open("ab") as f:
            f.write(b"3 :c\n7 Gg O1 :d\n8 :e-half-writ")
        grown = dovecot.read(fd, first)
        assert grown is not None and grown.uids is not first.uids
        whole = dovecot.parse(path.read_bytes())
        for uidlist in (grown, whole):
            assert uidlist.uids == {"a": 1, "b": 2, "c": 3, "d": 7}
            assert uidlist.extensions == {"b": {"P": "p"}, "d": {"G": "g", "O": "1"}}
            assert uidlist.next_uid == 8
        assert first.uids == {"a": 1, "b": 2}  # the cached one is not changed under a reader
        with path.open("ab") as f:
            f.write(b"ten\n")
        assert dovecot.read(fd, grown).uids["e-half-written"] == 8  # type: ignore[union-attr]
        # A rewritten file (another header) is read whole.
        path.write_bytes(b"3 V6 N2 G" + b"0" * 32 + b"\n1 :z\n" + b" " * 200)
        again = dovecot.read(fd, grown)
        assert again is not None and (again.uidvalidity, again.uids) == (6, {"z": 1})


def test_version_1_and_next_uid_after_the_last_record() -> None:
    uidlist = dovecot.parse(b"1 99 2\n1 a\n5 b:2,S\n")
    assert (uidlist.uidvalidity, uidlist.next_uid) == (99, 6)
    assert uidlist.uids == {"a": 1, "b": 5}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"x\n",
        b"3 V0 N1\n",
        b"3 N5\n",
        b"9 V1 N1\n",
        b"3 V1 N9\n2 :a\n1 :b\n",
        b"3 V1 N9\n1 :a/b\n",
    ],
)
def test_corrupt_uidlists_are_refused(data: bytes) -> None:
    with pytest.raises(dovecot.CorruptUidlist):
        dovecot.parse(data)


def test_dovecot_sort_order() -> None:
    names = ["20.M5P1.h", "3.M9P1.h", "20.M10P1.h", "x.h", "20.M5P1.g"]
    assert sorted(names, key=dovecot.sort_key) == [
        "x.h",  # no seconds: 0
        "3.M9P1.h",
        "20.M5P1.g",
        "20.M5P1.h",
        "20.M10P1.h",
    ]


def test_with_flag_keeps_flags_sorted() -> None:
    assert dovecot.with_flag("b:2,", "S") == "b:2,S"
    assert dovecot.with_flag("b:2,RFa", "S") == "b:2,FRSa"
    assert dovecot.with_flag("b:2,S", "S") == "b:2,S"
    assert dovecot.with_flag("b", "S") == "b:2,S"
    assert dovecot.with_flag("b:1,odd", "S") == "b:1,odd"


# --------------------------------------------------------------------------- the store


def test_new_messages_get_uids_in_dovecot_order_and_a_uidlist(tmp_path: Path) -> None:
    box = _maildir(tmp_path, BASES[1:])
    _maildir(tmp_path, BASES[:1], sub="new")
    (box / "dovecot-uidvalidity").write_text("00001000")
    (box / "dovecot-uidvalidity.00001000").touch()
    uids = _uids(_store(tmp_path))
    text = (box / "dovecot-uidlist").read_text()
    # UIDVALIDITY: the next value of dovecot-uidvalidity, or the time if that is larger.
    validity = int(text.split()[1][1:])
    assert validity >= 0x1001 and (box / f"dovecot-uidvalidity.{validity:08x}").exists()
    assert [u for _, u in uids] == [f"{i:08x}{validity:08x}" for i in (1, 2, 3)]
    assert [k for k, _ in uids] == BASES
    assert not (box / dovecot.LOCK).exists()


def test_uidlist_order_wins_over_time_stamps(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    (box / "dovecot-uidlist").write_text(
        f"3 V7 N9 G{'0' * 32}\n2 :{BASES[2]}\n5 :{BASES[0]}\n8 :{BASES[1]}\n"
    )
    assert _uids(_store(tmp_path, "%u")) == [(BASES[2], "2"), (BASES[0], "5"), (BASES[1], "8")]


@pytest.mark.parametrize("settled", [False, True])
def test_a_rewritten_uidlist_is_seen_behind_a_cached_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settled: bool
) -> None:
    """A new UIDVALIDITY changes no file in cur/: the cached snapshot must not be reused,
    neither after listing cur/ nor when new/ and cur/ are old enough not to be listed."""
    if settled:
        later = time.time_ns() + 10 * maildir.SETTLED_NS
        monkeypatch.setattr(maildir, "_now", lambda: later)
    box = _maildir(tmp_path)
    store = _store(tmp_path, "%u.%v")
    first = _uids(store)
    old = (box / "dovecot-uidlist").read_text()
    validity = old.split()[1][1:]
    (box / "dovecot-uidlist").write_text(old.replace(f"V{validity}", "V77", 1))
    assert [u for _, u in _uids(store)] == ["1.77", "2.77", "3.77"] != [u for _, u in first]


def test_a_corrupt_uidlist_fails_the_login_temporarily(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    (box / "dovecot-uidlist").write_text("garbage\n")
    with pytest.raises(TemporaryFailure):
        _uids(_store(tmp_path))
    assert (box / "dovecot-uidlist").read_text() == "garbage\n"


def test_without_a_format_nothing_of_dovecot_is_read_or_written(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    assert _uids(_store(tmp_path, None)) == [(b, b) for b in BASES]
    assert not (box / "dovecot-uidlist").exists()


def test_unprintable_saved_uidls_are_digested_long_ones_kept(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    long, longer = "L" * 480, "M" * 481  # the longest that fits a 512-octet line, and more
    (box / "dovecot-uidlist").write_text(
        f"3 V7 N9 G{'0' * 32}\n1 P{long} :{BASES[0]}\n2 P\x01bad :{BASES[1]}\n3 P :{BASES[2]}\n"
    )
    uids = [u for _, u in _uids(_store(tmp_path))]
    assert uids[0] == long and uids[1].startswith("H") and uids[2] == BASES[2]
    (box / "dovecot-uidlist").write_text(f"3 V7 N9 G{'0' * 32}\n1 P{longer} :{BASES[0]}\n")
    assert _uids(_store(tmp_path))[0][1].startswith("H")


# --------------------------------------------------------------------------- the lock


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _age(path: Path, seconds: float) -> None:
    st = path.stat()
    os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def test_a_live_lock_is_waited_for_then_refused(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    lock = box / dovecot.LOCK
    lock.write_text(f"{os.getppid()}:{socket.gethostname()}")
    _age(lock, 10)
    store = _store(tmp_path)
    store._dovecot._wait = 0  # type: ignore[union-attr]
    with pytest.raises(MaildropLocked):
        _uids(store)
    assert lock.exists() and not (box / "dovecot-uidlist").exists()


def test_a_dead_process_lock_is_overridden(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    lock = box / dovecot.LOCK
    lock.write_text(f"{_dead_pid()}:{socket.gethostname()}")
    _age(lock, 3)  # Dovecot reads the pid of a lock older than 2 seconds
    store = _store(tmp_path)
    store._dovecot._wait = 0  # type: ignore[union-attr]
    assert len(_uids(store)) == 3
    assert not lock.exists()


def test_a_young_dead_lock_is_not_overridden_at_once(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    (box / dovecot.LOCK).write_text(f"{_dead_pid()}:{socket.gethostname()}")
    store = _store(tmp_path)
    store._dovecot._wait = 0  # type: ignore[union-attr]
    with pytest.raises(MaildropLocked):
        _uids(store)


def test_another_hosts_lock_is_stale_after_two_minutes_without_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = _maildir(tmp_path)
    lock = box / dovecot.LOCK
    lock.write_text("1:another-host")
    store = _store(tmp_path)
    store._dovecot._wait = 0  # type: ignore[union-attr]
    now = time.time()
    monkeypatch.setattr(dovecot, "_clock", lambda: now + 60)
    with pytest.raises(MaildropLocked):
        _uids(store)
    monkeypatch.setattr(dovecot, "_clock", lambda: now + 125)
    assert len(_uids(store)) == 3


# --------------------------------------------------------------------------- \Seen


def _retrieve(store: MaildirStore, numbers: list[int], *, quit: bool, delete: list[int]) -> None:
    async def scenario() -> None:
        maildrop = await store.open("alice")
        try:
            for n in numbers:
                message: MessageInfo = maildrop.messages[n - 1]
                await read_all(maildrop, message)
                maildrop.retrieved(message)
            if quit:
                await maildrop.delete([maildrop.messages[n - 1] for n in delete])
        finally:
            await maildrop.close()

    run(scenario())


@pytest.mark.parametrize("quit", [True, False])
def test_retrieved_messages_are_flagged_seen_at_quit_or_disconnect(
    tmp_path: Path, quit: bool
) -> None:
    box = _maildir(tmp_path)
    os.rename(box / "cur" / f"{BASES[0]}:2,", box / "cur" / f"{BASES[0]}:2,RF")
    store = _store(tmp_path)
    before = _uids(store)
    _retrieve(store, [1, 2], quit=quit, delete=[2] if quit else [])
    names = sorted(os.listdir(box / "cur"))
    expected = [f"{BASES[0]}:2,FRS", f"{BASES[2]}:2,"]
    if not quit:
        expected.insert(1, f"{BASES[1]}:2,S")
    assert names == expected
    assert _uids(store) == [u for u in before if quit is False or u[0] != BASES[1]]


def test_no_flag_updates(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    _retrieve(_store(tmp_path, flag_updates=False), [1], quit=True, delete=[])
    assert f"{BASES[0]}:2," in os.listdir(box / "cur")


def test_a_file_renamed_meanwhile_is_still_flagged(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    store = _store(tmp_path)

    async def scenario() -> None:
        maildrop = await store.open("alice")
        try:
            maildrop.retrieved(maildrop.messages[0])
            # Another program flags it meanwhile.
            os.rename(box / "cur" / f"{BASES[0]}:2,", box / "cur" / f"{BASES[0]}:2,T")
            await maildrop.delete([])
        finally:
            await maildrop.close()

    run(scenario())
    assert f"{BASES[0]}:2,ST" in os.listdir(box / "cur")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_as_root_the_uidlist_and_renamed_files_keep_the_mail_users_owner(
    tmp_path: Path,
) -> None:
    box = _maildir(tmp_path)
    for parent, dirs, files in os.walk(tmp_path / "alice"):
        for name in (*dirs, *files):
            os.chown(os.path.join(parent, name), 4321, 4322)
    os.chown(tmp_path / "alice", 4321, 4322)
    store = _store(tmp_path)
    _retrieve(store, [1], quit=True, delete=[])
    st = (box / "dovecot-uidlist").stat()
    # The mode is the Maildir's without execute bits, as Dovecot creates its files.
    mode = (box.stat().st_mode & 0o666) or 0o600
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4321, 4322, mode)
    st = (box / "cur" / f"{BASES[0]}:2,S").stat()
    assert (st.st_uid, st.st_gid) == (4321, 4322)
    for path in box.glob("dovecot-uidvalidity*"):  # Dovecot opens it for writing
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (4321, 4322), path.name


# --------------------------------------------------------------------------- hiding


def _hide(store: MaildirStore, numbers: list[int]) -> None:
    async def scenario() -> None:
        maildrop = await store.open("alice")
        try:
            await maildrop.delete([maildrop.messages[n - 1] for n in numbers])
        finally:
            await maildrop.close()

    run(scenario())


def test_deleted_flag_hides_with_the_next_free_keyword_letter(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    (box / "new" / "1650000099.M9P1.host,S=10,W=11").write_bytes(b"x\n")
    (box / "dovecot-keywords").write_text("0 Junk\n2 NonJunk\n")
    store = _store(tmp_path, deleted_flag="$POP3Deleted")
    _hide(store, [1, 4])
    assert (box / "dovecot-keywords").read_text() == "0 Junk\n2 NonJunk\n1 $POP3Deleted\n"
    names = sorted(os.listdir(box / "cur"))
    assert names[0] == f"{BASES[0]}:2,b" and names[3] == "1650000099.M9P1.host,S=10,W=11:2,b"
    assert os.listdir(box / "new") == []
    assert [k for k, _ in _uids(store)] == BASES[1:]
    assert not (box / dovecot.LOCK).exists()


def test_deleted_flag_without_a_free_letter_deletes_nothing(tmp_path: Path) -> None:
    box = _maildir(tmp_path)
    (box / "dovecot-keywords").write_text("".join(f"{i} k{i}\n" for i in range(26)))
    store = _store(tmp_path, deleted_flag="Gone")
    with pytest.raises(TemporaryFailure):
        _hide(store, [1])
    assert len(_uids(store)) == 3
    assert sorted(os.listdir(box / "cur")) == [f"{b}:2," for b in BASES]


def test_hiding_not_made_durable_is_reported_as_partial(tmp_path: Path) -> None:
    _maildir(tmp_path)
    failing = False

    def fsync(fd: int) -> None:
        if failing:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)

    store = _store(tmp_path, deleted_flag="Gone", fsync=fsync)
    _uids(store)  # the uidlist and the keyword are written while fsync works
    box = tmp_path / "alice" / "Maildir"
    with directory(box) as fd:
        assert dovecot.keyword_letter(fd, "Gone", os.fsync) == "a"

    async def scenario() -> None:
        nonlocal failing
        maildrop = await store.open("alice")
        try:
            failing = True
            with pytest.raises(PartialDeletion) as caught:
                await maildrop.delete([maildrop.messages[0]])
            assert (caught.value.deleted, caught.value.pending) == (1, False)
        finally:
            failing = False
            await maildrop.close()

    run(scenario())
