"""mailslot and a real Dovecot 2.3 serve the *same* Maildir, in turn: same UIDL, LIST, flags.

The issue "take over a Dovecot site without one user noticing": each test starts a private
Dovecot (tests/support/dovecot.py) with a ``pop3_uidl_format`` and a mailslot whose
``[store] maildir`` is Dovecot's own mail directory, with the same ``uidl_format``.  Both
read and write ``dovecot-uidlist``; after Dovecot saw some messages, after mailslot
delivered some over LMTP, after a DELE by either, every listing must be byte for byte the
one the other server gives.  ``\\Seen`` set by mailslot's RETR is read back with Dovecot's
own ``doveadm fetch``.

As root, Dovecot gives mail processes the unprivileged owner of the Maildir (``dovenull``)
while this mailslot runs as root: what mailslot writes into the Maildir (the uidlist, the
renamed files) must stay the mail user's.  Messages mailslot's LMTP delivers are created by
root and chowned by the test before Dovecot reads them, as a site would run mailslot as
the mail user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.dovecot import DovecotServer
from tests.support.maildir import SAMPLE_MESSAGES, MaildirBuilder, retr_wire
from tests.support.passwd import DEFAULT_USERS
from tests.support.server import DEFAULT_LISTENERS, Listener, MailslotServer
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire

pytestmark = pytest.mark.dovecot

CORPUS = [data for name, data in SAMPLE_MESSAGES.items() if name != "empty"]
PASSWORD = "alice-secret"
FORMATS = ["%08Xu%08Xv", "%f", "%u%v", "%g", "%v.%u", "%-4.3Xu-%.5f"]


class Pair:
    """A Dovecot and a mailslot on one Maildir."""

    def __init__(self, dovecot: DovecotServer, mailslot: MailslotServer) -> None:
        self.dovecot = dovecot
        self.mailslot = mailslot
        self.maildir = dovecot.maildir("alice")

    def dovecot_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.dovecot.pop3_port

    def session(self, server: str) -> Pop3Wire:
        if server == "dovecot":
            wire = Pop3Wire(*self.dovecot_address())
        else:
            wire = Pop3Wire(*self.mailslot.starttls)
        assert wire.command("STLS").startswith(b"+OK")
        wire.start_tls(self.mailslot.tls_files.client_context())
        wire.login("alice", PASSWORD)
        return wire

    def listings(self, server: str) -> tuple[bytes, bytes]:
        with self.session(server) as wire:
            assert wire.command("LIST").startswith(b"+OK")
            listing = wire.multiline()
            assert wire.command("UIDL").startswith(b"+OK")
            uidl = wire.multiline()
            assert wire.command("QUIT").startswith(b"+OK")
        return listing, uidl

    def assert_same(self) -> tuple[bytes, bytes]:
        ours = self.listings("mailslot")
        theirs = self.listings("dovecot")
        assert ours == theirs, f"Dovecot log:\n{self.dovecot.log()}"
        return ours

    def chown(self) -> None:
        """Give the mail user what the test (root) wrote; Dovecot may still be replacing
        its own files after its QUIT reply, so one that vanishes is skipped."""
        if os.geteuid() != 0:
            return
        for parent, dirs, files in os.walk(self.dovecot.mail_root):
            for name in (*dirs, *files):
                with contextlib.suppress(FileNotFoundError):
                    path = os.path.join(parent, name)
                    os.chown(path, self.dovecot.uid, self.dovecot.gid, follow_symlinks=False)

    def deliver(self, count: int) -> None:
        address, port = self.mailslot.listener("none", protocol="lmtp")
        with smtplib.LMTP(address, port) as lmtp:
            for data in CORPUS[:count]:
                lmtp.sendmail("sender@example.org", ["alice"], data)
        self.chown()

    def flags(self) -> list[str]:
        """Dovecot's view of each message's flags, in its UID order."""
        doveadm = shutil.which("doveadm")
        assert doveadm is not None
        out = subprocess.run(
            [doveadm, "-c", str(self.dovecot.config_path), "fetch", "-u", "alice", "flags", "ALL"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [line.partition(":")[2].strip() for line in out.splitlines() if line]


@pytest.fixture
def pair_factory(tls_files: TlsFiles, mailslot_factory: object) -> Iterator[object]:
    started: list[DovecotServer] = []

    def make(uidl_format: str, **settings: str) -> Pair:
        dovecot = DovecotServer(
            tls_files, DEFAULT_USERS, settings={"pop3_uidl_format": uidl_format, **settings}
        )
        started.append(dovecot)
        store: dict[str, object] = {
            "maildir": f"{dovecot.mail_root}/{{user}}/Maildir",
            "uidl_format": uidl_format,
        }
        if settings.get("pop3_reuse_xuidl") == "yes":
            store["reuse_xuidl"] = True
        if settings.get("pop3_no_flag_updates") == "yes":
            store["flag_updates"] = False
        if "pop3_deleted_flag" in settings:
            store["deleted_flag"] = settings["pop3_deleted_flag"]
        mailslot = mailslot_factory(  # type: ignore[operator]
            listeners=(*DEFAULT_LISTENERS, Listener("none", protocol="lmtp")),
            extra_sections={"store": store},
        )
        return Pair(dovecot, mailslot)

    yield make
    for dovecot in started:
        dovecot.stop()


def _fill(maildir: Path, count: int = len(CORPUS), first_seconds: int = 1_650_000_000) -> None:
    builder = MaildirBuilder(maildir, first_seconds=first_seconds)
    for i, data in enumerate(CORPUS[:count]):
        builder.add(data, folder="new" if i % 3 else "cur", flags="S" if i % 2 else "")


@pytest.mark.parametrize("uidl_format", FORMATS)
def test_dovecot_first_then_mailslot_then_both(pair_factory: object, uidl_format: str) -> None:
    pair: Pair = pair_factory(uidl_format)  # type: ignore[operator]
    _fill(pair.maildir, 5)
    pair.dovecot.start()
    first = pair.listings("dovecot")  # Dovecot writes dovecot-uidlist
    assert pair.listings("mailslot") == first
    # mailslot delivers; mailslot numbers the new messages first, then Dovecot agrees.
    pair.deliver(3)
    _, uidl = pair.assert_same()
    assert len(uidl.splitlines()) == 8 + 1  # and the terminator
    # A DELE by Dovecot, then one by mailslot: each server sees what the other did.
    with pair.session("dovecot") as wire:
        assert wire.command("DELE 2").startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
    pair.assert_same()
    with pair.session("mailslot") as wire:
        assert wire.command("DELE 1").startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
    _, uidl = pair.assert_same()
    assert len(uidl.splitlines()) == 6 + 1


@pytest.mark.parametrize("uidl_format", ["%08Xu%08Xv", "%f"])
def test_mailslot_first_then_dovecot(pair_factory: object, uidl_format: str) -> None:
    """No uidlist yet: mailslot creates it as Dovecot would, and Dovecot adopts it."""
    pair: Pair = pair_factory(uidl_format)  # type: ignore[operator]
    _fill(pair.maildir, 4)
    pair.chown()
    pair.dovecot.start()
    ours = pair.listings("mailslot")
    assert (pair.maildir / "dovecot-uidlist").exists()
    assert ours == pair.listings("dovecot"), pair.dovecot.log()
    pair.deliver(2)
    theirs = pair.listings("dovecot")  # this time Dovecot numbers the new ones
    assert pair.listings("mailslot") == theirs
    if os.geteuid() == 0:
        st = (pair.maildir / "dovecot-uidlist").stat()
        assert (st.st_uid, st.st_gid) == (pair.dovecot.uid, pair.dovecot.gid)


def test_long_names_are_sent_whole(pair_factory: object) -> None:
    pair: Pair = pair_factory("%f")  # type: ignore[operator]
    builder = MaildirBuilder(pair.maildir, host="a-very-long-host-name." * 4 + "example")
    builder.add(CORPUS[0])
    builder.add(CORPUS[1], folder="cur")
    pair.dovecot.start()
    _, uidl = pair.assert_same()
    assert all(len(line.split()[1]) > 70 for line in uidl.splitlines()[:-1])


def test_uidlist_order_beats_time_stamps(pair_factory: object) -> None:
    """A message moved in later with an older time stamp comes last, as in Dovecot."""
    pair: Pair = pair_factory("%08Xu%08Xv")  # type: ignore[operator]
    _fill(pair.maildir, 3, first_seconds=1_700_000_000)
    pair.dovecot.start()
    pair.listings("dovecot")
    _fill(pair.maildir, 2, first_seconds=1_600_000_000)  # older names, newer UIDs
    pair.chown()
    theirs = pair.listings("dovecot")
    assert pair.listings("mailslot") == theirs
    with pair.session("mailslot") as wire:
        # The fourth message is the first of the older-stamped ones: today's delivery
        # order would have made it the first.
        assert wire.command("RETR 4").startswith(b"+OK")
        assert wire.multiline() == retr_wire(CORPUS[0])
        assert wire.command("RETR 1").startswith(b"+OK")
        assert wire.multiline() == retr_wire(CORPUS[0])  # the first of the first batch
        assert wire.command("RETR 5").startswith(b"+OK")
        assert wire.multiline() == retr_wire(CORPUS[1])
        assert wire.command("QUIT").startswith(b"+OK")


def _migrated_uidlist(maildir: Path, fields: list[str]) -> list[str]:
    """Write a uidlist as a migration script would, before Dovecot first opens the box."""
    names = sorted(os.listdir(maildir / "cur"))
    bases = [name.partition(":")[0] for name in names]
    lines = [f"3 V1234567 N{len(bases) + 1} G{'ab' * 16}"]
    lines += [
        f"{i} {f}:{base}".replace("  ", " ")
        for i, (f, base) in enumerate(zip(fields, bases, strict=True), 1)
    ]
    (maildir / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    return bases


def test_saved_p_fields_and_empty_p(pair_factory: object) -> None:
    """UIDLs saved in the uidlist (pop3_save_uidl, migrations) are sent as they are, an
    empty ``P`` as the base name; POP3 order numbers (``O``) come first."""
    pair: Pair = pair_factory("%08Xu%08Xv")  # type: ignore[operator]
    builder = MaildirBuilder(pair.maildir)
    for data in CORPUS[:4]:
        builder.add(data, folder="cur")
    bases = _migrated_uidlist(pair.maildir, ["Pmigrated-uidl-1 ", "P ", "O2 Pthird ", "O1 "])
    pair.chown()
    pair.dovecot.start()
    _, uidl = pair.assert_same()
    assert uidl.split(b"\r\n")[:4] == [
        b"1 00000004%08x" % 1234567,
        b"2 third",
        b"3 migrated-uidl-1",
        b"4 " + bases[1].encode(),
    ]


def test_lost_uidlist_gets_a_new_uidvalidity(pair_factory: object) -> None:
    """Without a uidlist (and index) every message is numbered anew under a new
    UIDVALIDITY; mailslot does it first here, and Dovecot takes its numbers."""
    pair: Pair = pair_factory("%08Xu%08Xv")  # type: ignore[operator]
    _fill(pair.maildir, 3)
    pair.dovecot.start()
    before = pair.assert_same()
    pair.dovecot.settle()
    for path in pair.maildir.iterdir():
        if path.name.startswith(("dovecot-uidlist", "dovecot.index")):
            path.unlink()
    after = pair.listings("mailslot")
    assert after[1] != before[1] and after[0] == before[0]
    assert pair.listings("dovecot") == after


def test_pop3_save_uidl(pair_factory: object) -> None:
    """Dovecot saves the UIDLs it sent (P fields, empty for the base name); mailslot sends
    the saved ones, also once Dovecot's format changed."""
    pair: Pair = pair_factory("%f", pop3_save_uidl="yes")  # type: ignore[operator]
    _fill(pair.maildir, 3)
    pair.dovecot.start()
    pair.assert_same()
    pair.deliver(1)  # a change makes Dovecot rewrite its uidlist, P fields included
    pair.assert_same()
    assert b" P :" in (pair.maildir / "dovecot-uidlist").read_bytes()


def test_x_uidl_reused(pair_factory: object) -> None:
    pair: Pair = pair_factory("%08Xu%08Xv", pop3_reuse_xuidl="yes")  # type: ignore[operator]
    builder = MaildirBuilder(pair.maildir)
    builder.add(b"X-UIDL: from-the-old-server-1\nSubject: a\n\nbody\n")
    builder.add(b"Subject: b\n\nno X-UIDL here\n")
    builder.add(b"Subject: c\nx-uidl:   spaced-and-cased\n\nbody\n", folder="cur")
    pair.dovecot.start()
    _, uidl = pair.assert_same()
    assert b"1 from-the-old-server-1\r\n" in uidl
    assert b"3 spaced-and-cased\r\n" in uidl


def test_folded_x_uidl_is_not_sent_raw(pair_factory: object) -> None:
    """Dovecot sends a folded X-UIDL with its line break inside the UIDL line, which
    breaks the listing; mailslot sends a digest instead (a deliberate difference)."""
    pair: Pair = pair_factory("%08Xu%08Xv", pop3_reuse_xuidl="yes")  # type: ignore[operator]
    MaildirBuilder(pair.maildir).add(b"X-UIDL: folded\n and-more\n\nbody\n")
    pair.dovecot.start()
    _, theirs = pair.listings("dovecot")
    _, ours = pair.listings("mailslot")
    assert theirs == b"1 folded\n and-more\r\n.\r\n"
    assert ours.startswith(b"1 H") and len(ours.splitlines()) == 2


def test_seen_after_retr_not_after_top(pair_factory: object) -> None:
    pair: Pair = pair_factory("%08Xu%08Xv")  # type: ignore[operator]
    builder = MaildirBuilder(pair.maildir)
    for data in CORPUS[:3]:
        builder.add(data, folder="cur", flags="F")
    pair.dovecot.start()
    pair.listings("dovecot")
    with pair.session("mailslot") as wire:
        assert wire.command("RETR 1").startswith(b"+OK")
        wire.multiline()
        assert wire.command("TOP 2 0").startswith(b"+OK")
        wire.multiline()
        assert wire.command("QUIT").startswith(b"+OK")
    flags = pair.flags()
    assert "\\Seen" in flags[0].split() and "\\Flagged" in flags[0].split()
    assert "\\Seen" not in flags[1].split()
    names = sorted(os.listdir(pair.maildir / "cur"))
    assert names[0].endswith(":2,FS")
    if os.geteuid() == 0:
        st = (pair.maildir / "cur" / names[0]).stat()
        assert (st.st_uid, st.st_gid) == (pair.dovecot.uid, pair.dovecot.gid)
    # The UIDLs did not change with the file name.
    pair.assert_same()


def test_no_flag_updates(pair_factory: object) -> None:
    pair: Pair = pair_factory("%08Xu%08Xv", pop3_no_flag_updates="yes")  # type: ignore[operator]
    MaildirBuilder(pair.maildir).add(CORPUS[0], folder="cur")
    pair.dovecot.start()
    with pair.session("mailslot") as wire:
        assert wire.command("RETR 1").startswith(b"+OK")
        wire.multiline()
        assert wire.command("QUIT").startswith(b"+OK")
    assert "\\Seen" not in pair.flags()[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_a_server_that_drops_to_the_mail_user_shares_the_maildir(tls_files: TlsFiles) -> None:
    """``[server] user`` is Dovecot's mail user: what mailslot writes is that user's."""
    dovecot = DovecotServer(tls_files, DEFAULT_USERS, settings={"pop3_uidl_format": "%u%v"})
    # Below Dovecot's 0755 directory, so that the dropped workers can reach their files.
    directory = dovecot.directory / "mailslot"
    mailslot = MailslotServer(
        directory,
        tls_files,
        listeners=(*DEFAULT_LISTENERS, Listener("none", protocol="lmtp")),
        extra_sections={
            "server": {"user": pwd.getpwuid(dovecot.uid).pw_name},
            "store": {"maildir": f"{dovecot.mail_root}/{{user}}/Maildir", "uidl_format": "%u%v"},
        },
    )
    os.chown(mailslot.passwd_path, dovecot.uid, dovecot.gid)
    try:
        _fill(dovecot.maildir("alice"), 3)
        dovecot.start()
        mailslot.start()
        pair = Pair(dovecot, mailslot)
        before = pair.listings("mailslot")  # mailslot writes the uidlist, as the mail user
        with pair.session("mailslot") as wire:
            assert wire.command("RETR 1").startswith(b"+OK")
            wire.multiline()
            assert wire.command("QUIT").startswith(b"+OK")
        assert pair.listings("dovecot") == before, dovecot.log()
        with smtplib.LMTP(*mailslot.listener("none", protocol="lmtp")) as lmtp:
            lmtp.sendmail("sender@example.org", ["alice"], CORPUS[0])  # no chown after it
        pair.assert_same()
        assert "\\Seen" in pair.flags()[0]
        for path in pair.maildir.rglob("*"):
            st = path.lstat()
            assert (st.st_uid, st.st_gid) == (dovecot.uid, dovecot.gid), path
    finally:
        mailslot.stop()
        dovecot.stop()


def test_hide_instead_of_delete(pair_factory: object) -> None:
    """pop3_deleted_flag: DELE flags the message with a keyword at QUIT, and neither server
    lists a flagged message again; the file stays, for IMAP users to see."""
    pair: Pair = pair_factory("%08Xu%08Xv", pop3_deleted_flag="POP3Deleted")  # type: ignore[operator]
    _fill(pair.maildir, 4)
    pair.dovecot.start()
    pair.assert_same()
    with pair.session("mailslot") as wire:
        assert wire.command("DELE 1").startswith(b"+OK")
        assert wire.command("DELE 3").startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
    _, uidl = pair.assert_same()
    assert len(uidl.splitlines()) == 2 + 1
    flags = pair.flags()
    assert len(flags) == 4
    assert ["POP3Deleted" in f.split() for f in flags] == [True, False, True, False]
    with pair.session("dovecot") as wire:
        assert wire.command("DELE 1").startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
    _, uidl = pair.assert_same()
    assert len(uidl.splitlines()) == 1 + 1
    assert len(list((pair.maildir / "cur").iterdir())) == 4


def test_a_mailslot_session_survives_dovecot_flagging_its_messages(pair_factory: object) -> None:
    """Both at the same time: while a mailslot session is open, Dovecot's RETR renames a
    file (\\Seen); mailslot still serves it under the same number and UIDL, and flags the
    others it retrieved at QUIT."""
    pair: Pair = pair_factory("%08Xu%08Xv")  # type: ignore[operator]
    builder = MaildirBuilder(pair.maildir)
    for data in CORPUS[:3]:
        builder.add(data, folder="cur")
    pair.dovecot.start()
    before = pair.assert_same()
    with pair.session("mailslot") as ours:
        with pair.session("dovecot") as theirs:
            for n in (1, 2):
                assert theirs.command(f"RETR {n}").startswith(b"+OK")
                theirs.multiline()
            assert theirs.command("QUIT").startswith(b"+OK")
        assert all(name.endswith(":2,S") for name in sorted(os.listdir(pair.maildir / "cur"))[:2])
        for n in (1, 3):
            assert ours.command(f"RETR {n}").startswith(b"+OK")
            assert ours.multiline() == retr_wire(CORPUS[n - 1])
        assert ours.command("UIDL").startswith(b"+OK")
        assert ours.multiline() == before[1]
        assert ours.command("QUIT").startswith(b"+OK")
    assert [f.split() for f in pair.flags()] == [["\\Seen"]] * 3
    assert pair.assert_same() == before


@pytest.mark.parametrize("server", ["dovecot", "mailslot"])
def test_seen_at_the_end_and_rset_takes_it_back(pair_factory: object, server: str) -> None:
    """The same script on each server gives the same flags, read with ``doveadm fetch``:
    RETR flags ``\\Seen`` only when the session ends (nothing mid-session), RSET takes
    back the flags of the messages retrieved before it (Dovecot's ``cmd_rset`` clears its
    pending changes), and a session that ends without QUIT still flags what it retrieved,
    but deletes nothing."""
    pair: Pair = pair_factory("%08Xu%08Xv")  # type: ignore[operator]
    builder = MaildirBuilder(pair.maildir)
    for data in CORPUS[:5]:
        builder.add(data, folder="cur")
    pair.dovecot.start()
    pair.listings("dovecot")
    with pair.session(server) as wire:
        for number in (1, 2):
            assert wire.command(f"RETR {number}").startswith(b"+OK")
            wire.multiline()
        assert pair.flags() == [""] * 5  # nothing until the session ends
        assert wire.command("RSET").startswith(b"+OK")
        assert wire.command("RETR 3").startswith(b"+OK")
        wire.multiline()
        assert wire.command("QUIT").startswith(b"+OK")
        assert wire.read_until_eof() == b""
    assert pair.flags() == ["", "", "\\Seen", "", ""]
    with pair.session(server) as wire:
        assert wire.command("RETR 4").startswith(b"+OK")
        wire.multiline()
        assert wire.command("DELE 5").startswith(b"+OK")
    # Gone without QUIT: the server flags message 4 when it notices, and keeps message 5.
    deadline = time.monotonic() + 15
    while pair.flags()[3] != "\\Seen" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pair.flags() == ["", "", "\\Seen", "\\Seen", ""]
