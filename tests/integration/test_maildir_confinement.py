"""A mail user who owns their Maildir plants symlinks in it: nothing outside may be reached.

The attacks of issue 15 against ``mailslot serve`` with two workers, over real sockets with
poplib: a symlink at every component below the maildrop's root (the user's directory, the
Maildir itself, cur/, new/, tmp/, a message file, the lock, the size cache, the journal)
pointing at a directory or file outside that holds canary files.  A directory component that
is a symlink refuses the login with ``-ERR [SYS/PERM]`` (RFC 3206 section 4) and a log line;
whatever happens, no canary is listed, served, moved or deleted.
"""

from __future__ import annotations

import contextlib
import os
import poplib
import threading
from pathlib import Path

import pytest
from tests.support.maildir import MaildirBuilder
from tests.support.popclient import pop3_connect
from tests.support.server import MailslotServer, ServerFactory

CANARIES = 5


def _canaries(directory: Path, tag: str) -> dict[str, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    planted = {}
    for n in range(1, CANARIES + 1):
        data = b"Subject: canary %s %d\n\nsecret %s %d\n" % (tag.encode(), n, tag.encode(), n)
        (directory / f"15000000{n:02d}.M{n}P1.canary:2,S").write_bytes(data)
        planted[f"15000000{n:02d}.M{n}P1.canary:2,S"] = data
    return planted


def _outside_maildir(outside: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (outside / sub).mkdir(parents=True, exist_ok=True)
    _canaries(outside / "cur", "cur")
    _canaries(outside / "new", "new")


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every regular file under ``directory`` (not following symlinks), with its bytes."""
    found = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                found[str(path.relative_to(directory))] = path.read_bytes()
    return found


def _attack(server: MailslotServer) -> tuple[bytes, int, int]:
    """Log in as alice, list, RETR and DELE everything, QUIT.

    Returns the login reply and how many messages were listed and served.
    """
    client = pop3_connect(server, "implicit")
    try:
        client.user("alice")
        try:
            reply = client.pass_(server.password("alice"))
        except poplib.error_proto as exc:
            return exc.args[0], 0, 0
        _, listing, _ = client.list()
        served = 0
        for n in range(1, len(listing) + 1):
            _, lines, _ = client.retr(n)
            if any(b"canary" in line for line in lines):
                served += 1
            client.dele(n)
        client.quit()
        return reply, len(listing), served
    finally:
        with contextlib.suppress(OSError):
            client.close()


def _plant(kind: str, maildir: Path, outside: Path) -> None:
    """Make alice's ``kind`` component a symlink to something outside with canaries."""
    if kind == "user-directory":
        _outside_maildir(outside / "Maildir")
        user_dir = maildir.parent
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).rmdir()
        maildir.rmdir()
        user_dir.rmdir()
        user_dir.symlink_to(outside)
    elif kind == "maildir":
        _outside_maildir(outside)
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).rmdir()
        maildir.rmdir()
        maildir.symlink_to(outside)
    else:  # cur, new, tmp
        _canaries(outside, kind)
        (maildir / kind).rmdir()
        (maildir / kind).symlink_to(outside)


@pytest.fixture
def server(mailslot_factory: ServerFactory) -> MailslotServer:
    return mailslot_factory(extra_sections={"server": {"workers": 2}})


@pytest.mark.parametrize("kind", ["user-directory", "maildir", "cur", "new", "tmp"])
def test_a_symlinked_directory_refuses_the_login_and_reaches_nothing_outside(
    server: MailslotServer, tmp_path: Path, kind: str
) -> None:
    maildir = server.maildir("alice")
    MaildirBuilder(maildir)  # the user's Maildir with cur/ new/ tmp/
    outside = tmp_path / "outside"
    _plant(kind, maildir, outside)
    before = _snapshot(outside)

    reply, listed, served = _attack(server)
    after = _snapshot(outside)
    gone = len(set(before) - set(after))
    moved = len(set(after) - set(before))
    assert (listed, served, gone, moved) == (0, 0, 0, 0), (
        f"{kind}: {listed} listed, {served} canaries served, {gone} deleted or moved away, "
        f"{moved} files appeared outside"
    )
    assert after == before
    assert reply.startswith(b"-ERR [SYS/PERM]"), reply
    log = server.log()
    assert "cannot open maildrop: user=alice" in log
    component = {"user-directory": "alice", "maildir": "alice/Maildir"}.get(kind, kind)
    assert f"{component} is not a directory" in log


@pytest.mark.parametrize("kind", ["message", "lock", "size-cache", "journal", "journal-tmp"])
def test_a_symlinked_file_is_never_followed(
    server: MailslotServer, tmp_path: Path, kind: str
) -> None:
    maildir = server.maildir("alice")
    builder = MaildirBuilder(maildir)
    # A name without ,W= so the size cache is read and written at login.
    own = builder.add(b"Subject: mine\n\nmine\n", folder="cur", flags="S")
    outside = tmp_path / "outside"
    canaries = _canaries(outside, kind)
    target = outside / next(iter(canaries))
    link = {
        "message": maildir / "cur" / "1500000099.M99P1.link:2,S",
        "lock": maildir / ".mailslot.lock",
        "size-cache": maildir / ".mailslot-sizes",
        "journal": maildir / ".mailslot-expunge",
        "journal-tmp": maildir / ".mailslot-expunge.tmp",
    }[kind]
    link.symlink_to(target)
    before = _snapshot(outside)

    reply, listed, served = _attack(server)
    assert served == 0
    assert _snapshot(outside) == before
    if kind == "lock":
        assert reply.startswith(b"-ERR [SYS/PERM]"), reply
        assert "Maildir/.mailslot.lock is a symlink" in server.log()
    else:
        assert reply.startswith(b"+OK"), reply
        assert listed == 1
        assert not (maildir / "cur" / f"{own.base}:2,S").exists()  # DELE + QUIT worked


def test_swapping_cur_for_a_symlink_while_logins_run_never_escapes(
    server: MailslotServer, tmp_path: Path
) -> None:
    """A thread flips cur/ between a real directory and a symlink while sessions log in."""
    maildir = server.maildir("alice")
    builder = MaildirBuilder(maildir)
    builder.add(b"Subject: mine\n\nmine\n", folder="cur", flags="S")
    outside = tmp_path / "outside"
    canaries = _canaries(outside, "race")
    real_cur = maildir / "cur.real"
    (maildir / "cur").rename(real_cur)
    cur = maildir / "cur"
    stop = threading.Event()
    flips = 0

    def swap() -> None:
        nonlocal flips
        staging = maildir / "cur.link"
        while not stop.is_set():
            # cur/ is a symlink to the canaries for a while, then the real directory again.
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            staging.symlink_to(outside)
            with contextlib.suppress(OSError):
                os.rename(staging, cur)  # fails only over a directory a login just made
            for _ in range(200):
                os.lstat(maildir)  # hold the symlink in place a little, without sleeping
            try:
                cur.unlink()
            except IsADirectoryError:
                with contextlib.suppress(OSError):
                    cur.rmdir()
            except FileNotFoundError:
                pass
            with contextlib.suppress(OSError):
                os.rename(real_cur, cur)
            for _ in range(200):
                os.lstat(maildir)
            with contextlib.suppress(OSError):
                os.rename(cur, real_cur)
            flips += 1

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes: dict[str, int] = {}
    try:
        for _ in range(40):
            reply, _, served = _attack_without_delete(server)
            outcome = b" ".join(reply.split(b" ")[:2] if reply.startswith(b"-") else [b"+OK"])
            outcomes[outcome.decode()] = outcomes.get(outcome.decode(), 0) + 1
            assert served == 0, f"a canary was served ({outcomes})"
    finally:
        stop.set()
        swapper.join()
    assert flips > 0
    assert _snapshot(outside) == canaries
    # A login that met the symlink is refused; one that met cur/ missing mid-swap may be
    # told to come back ([SYS/TEMP]); none is served anything of the outside.
    assert set(outcomes) <= {"+OK", "-ERR [SYS/PERM]", "-ERR [SYS/TEMP]"}, outcomes


def _attack_without_delete(server: MailslotServer) -> tuple[bytes, int, int]:
    client = pop3_connect(server, "implicit")
    try:
        client.user("alice")
        try:
            reply = client.pass_(server.password("alice"))
        except poplib.error_proto as exc:
            return exc.args[0], 0, 0
        _, listing, _ = client.list()
        served = 0
        for n in range(1, len(listing) + 1):
            try:
                _, lines, _ = client.retr(n)
            except poplib.error_proto:
                continue
            if any(b"canary" in line for line in lines):
                served += 1
        client.quit()
        return reply, len(listing), served
    finally:
        with contextlib.suppress(OSError):
            client.close()
