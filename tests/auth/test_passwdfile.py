"""The passwd-file backend beyond the shared contract: format, reload, dummy hash, threads."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest
from passlib.hash import bcrypt

from mailslot.auth import schemes
from mailslot.auth.base import AuthenticationFailed, TemporaryAuthFailure, User
from mailslot.auth.memory import MemoryAuthenticator
from mailslot.auth.passwdfile import PasswdFileAuthenticator

from .conftest import run

SSHA_1 = "{SSHA}S55XocB2CN/JntcidijpUAg4uh2M0F5D"  # doveadm pw, "correct horse"
SSHA_2 = "{SSHA}1WwudHa53Y69wKrAOsMdqW+iXxZ1CJnZ"  # doveadm pw, "pässwörd"


class CountingVerifier:
    """A real schemes.verify that records which hash it checked, and on which thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []  # (stored, ran on the event loop's thread)
        self.loop_thread = threading.get_ident()

    def __call__(self, password: str, stored: str) -> bool:
        self.calls.append((stored, threading.get_ident() == self.loop_thread))
        return schemes.verify(password, stored)


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_format_fields_comments_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write(
        path,
        "# comment:{PLAIN}not-a-user\r\n"
        "\r\n"
        "   \n"
        "alice:{PLAIN}one:1000:1000:Alice A:/home/alice:/bin/false:"
        "userdb_quota_rule=*:storage=1G\r\n"
        "bob:{PLAIN}two\n"
        "carol:{PLAIN}three::::::\n",
    )
    auth = PasswdFileAuthenticator(path)
    assert run(auth.authenticate("alice", "one")) == User("alice", "/home/alice")
    assert run(auth.authenticate("bob", "two")) == User("bob", None)
    assert run(auth.authenticate("carol", "three")) == User("carol", None)
    assert run(auth.lookup("# comment")) is None


def test_malformed_lines_are_skipped_and_logged_by_number_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(
        b"alice:{PLAIN}one\n"
        b"no-password-field-SECRET1\n"
        b"../evil:{PLAIN}SECRET2\n"
        b"bad\xffutf8:{PLAIN}SECRET3\n"
        b"alice:{PLAIN}SECRET4\n"
        b"bob:{PLAIN}two\n"
    )
    with caplog.at_level(logging.WARNING, logger="mailslot.auth.passwdfile"):
        auth = PasswdFileAuthenticator(path)
        auth.load()
    text = "\n".join(r.getMessage() for r in caplog.records)
    for number in (2, 3, 4, 5):
        assert f"line {number}" in text
    assert "SECRET" not in text
    assert "evil" not in text
    assert run(auth.authenticate("bob", "two")).name == "bob"
    # The first of two duplicate lines wins.
    assert run(auth.authenticate("alice", "one")).name == "alice"
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("alice", "SECRET4"))


def test_plaintext_warning_is_logged_once_per_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "passwd"
    write(path, "alice:{PLAIN}one\n")
    auth = PasswdFileAuthenticator(path)
    with caplog.at_level(logging.WARNING, logger="mailslot.auth.passwdfile"):
        run(auth.authenticate("alice", "one"))
        write(path, "alice:{CLEARTEXT}one-longer\n")
        run(auth.authenticate("alice", "one-longer"))
    warnings = [r for r in caplog.records if "plaintext" in r.getMessage()]
    assert len(warnings) == 1


def test_no_plaintext_warning_for_hashes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "passwd"
    write(path, f"alice:{SSHA_1}\n")
    with caplog.at_level(logging.WARNING, logger="mailslot.auth.passwdfile"):
        PasswdFileAuthenticator(path).load()
    assert not [r for r in caplog.records if "plaintext" in r.getMessage()]


def test_reload_after_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write(path, "alice:{PLAIN}old\n")
    auth = PasswdFileAuthenticator(path)
    assert run(auth.authenticate("alice", "old")).name == "alice"
    new = tmp_path / "passwd.new"
    write(new, "alice:{PLAIN}new\nbob:{PLAIN}two\n")
    os.replace(new, path)
    assert run(auth.authenticate("alice", "new")).name == "alice"
    assert run(auth.lookup("bob")) == User("bob")
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("alice", "old"))


def test_reload_after_in_place_rewrite_of_the_same_size(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write(path, "alice:{PLAIN}aaaa\n")
    auth = PasswdFileAuthenticator(path)
    run(auth.authenticate("alice", "aaaa"))
    before = os.stat(path)
    write(path, "alice:{PLAIN}bbbb\n")
    # Same inode and size: only the mtime tells. Set it explicitly rather than wait for the
    # clock to move on.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert run(auth.authenticate("alice", "bbbb")).name == "alice"


def test_unchanged_file_is_not_reread(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write(path, "alice:{PLAIN}aaaa\n")
    auth = PasswdFileAuthenticator(path)
    run(auth.authenticate("alice", "aaaa"))
    before = os.stat(path)
    write(path, "alice:{PLAIN}bbbb\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same key as before
    assert run(auth.authenticate("alice", "aaaa")).name == "alice"


def test_unreadable_file_never_loaded_is_a_temporary_failure(tmp_path: Path) -> None:
    auth = PasswdFileAuthenticator(tmp_path / "missing")
    with pytest.raises(TemporaryAuthFailure):
        run(auth.authenticate("alice", "one"))
    with pytest.raises(TemporaryAuthFailure):
        run(auth.lookup("alice"))
    with pytest.raises(TemporaryAuthFailure):
        auth.load()


def test_file_gone_after_load_keeps_the_last_good_users(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write(path, "alice:{PLAIN}one\n")
    auth = PasswdFileAuthenticator(path)
    auth.load()
    path.unlink()
    assert run(auth.authenticate("alice", "one")).name == "alice"
    write(path, "alice:{PLAIN}two\n")
    assert run(auth.authenticate("alice", "two")).name == "alice"


def test_unknown_user_is_verified_against_a_hash_of_the_costliest_scheme(
    tmp_path: Path,
) -> None:
    """Not the most common scheme: then a user of a costlier one answered later, found."""
    path = tmp_path / "passwd"
    slow = "{BLF-CRYPT}" + bcrypt.using(rounds=4, ident="2y").hash("correct horse")
    write(path, f"plain:{{PLAIN}}x\nalice:{SSHA_1}\nbob:{SSHA_2}\ncarol:{slow}\n")
    verifier = CountingVerifier()
    auth = PasswdFileAuthenticator(path, verifier=verifier)
    for name in ("mallory", "../x", "a\r\nb", "x" * 300):
        with pytest.raises(AuthenticationFailed):
            run(auth.authenticate(name, "correct horse"))
    # Each attempt really verified, and against carol's bcrypt hash (bcrypt costs more than
    # a salted SHA-1 or a comparison), which "correct horse" even matches: still a failure.
    assert [stored for stored, _ in verifier.calls] == [slow] * 4


def test_users_without_a_usable_hash_cost_a_dummy_verification(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write(
        path,
        f"alice:{SSHA_1}\n"
        "md5:{PLAIN-MD5}3cb4e732631f47e6eb961f34554b7cde\n"  # "correct horse", refused
        "empty:\n"
        "odd:{NOPE}correct horse\n",
    )
    verifier = CountingVerifier()
    auth = PasswdFileAuthenticator(path, verifier=verifier)
    for name in ("md5", "empty", "odd"):
        with pytest.raises(AuthenticationFailed):
            run(auth.authenticate(name, "correct horse"))
        assert run(auth.lookup(name)) == User(name)
    assert [stored for stored, _ in verifier.calls] == [SSHA_1] * 3


def test_md5_user_can_log_in_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write(path, "md5:{PLAIN-MD5}3cb4e732631f47e6eb961f34554b7cde\n")
    auth = PasswdFileAuthenticator(path, allow_md5=True)
    assert run(auth.authenticate("md5", "correct horse")).name == "md5"


def test_empty_file_falls_back_to_a_fixed_argon2id_dummy(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write(path, "# nobody yet\n")
    verifier = CountingVerifier()
    auth = PasswdFileAuthenticator(path, verifier=verifier)
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("mallory", "x"))
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("eve", "y"))
    (first, on_loop_1), (second, on_loop_2) = verifier.calls
    assert first.startswith("{ARGON2ID}$argon2id$")
    assert second == first  # made once, not per attempt
    assert not on_loop_1 and not on_loop_2  # argon2 ran in a worker thread


def test_slow_schemes_run_off_the_event_loop_and_fast_ones_inline(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    slow = "{BLF-CRYPT}" + bcrypt.using(rounds=4, ident="2y").hash("one")
    write(path, f"alice:{slow}\nbob:{SSHA_1}\ncarol:{{PLAIN}}three\n")
    verifier = CountingVerifier()
    auth = PasswdFileAuthenticator(path, verifier=verifier)

    async def logins() -> None:
        verifier.loop_thread = threading.get_ident()
        await auth.authenticate("alice", "one")
        await auth.authenticate("bob", "correct horse")
        await auth.authenticate("carol", "three")

    asyncio.run(logins())
    assert [on_loop for _, on_loop in verifier.calls] == [False, True, True]


def test_memory_backend_uses_the_same_dummy_rule() -> None:
    verifier = CountingVerifier()
    auth = MemoryAuthenticator({"a": "x", "alice": SSHA_1, "bob": SSHA_2}, verifier=verifier)
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("mallory", "correct horse"))
    assert [stored for stored, _ in verifier.calls] == [SSHA_1]


def test_memory_backend_never_treats_a_refused_hash_as_plaintext() -> None:
    stored = "{PLAIN-MD5}3cb4e732631f47e6eb961f34554b7cde"
    auth = MemoryAuthenticator({"md5": stored})
    for password in (stored, "correct horse"):
        with pytest.raises(AuthenticationFailed):
            run(auth.authenticate("md5", password))


def test_memory_backend_refuses_invalid_names_up_front() -> None:
    with pytest.raises(ValueError):
        MemoryAuthenticator({"../x": "pw"})


def test_passwords_never_reach_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "passwd"
    write(path, "alice:{PLAIN}hunter2-stored\nbroken-line-hunter2\nbob:{NOPE}hunter2\n")
    auth = PasswdFileAuthenticator(path)
    with caplog.at_level(logging.DEBUG):
        for name in ("alice", "mallory", "a\r\nb"):
            with pytest.raises(AuthenticationFailed):
                run(auth.authenticate(name, "hunter2-typed"))
        run(auth.authenticate("alice", "hunter2-stored"))
    assert caplog.records  # the malformed and refused lines were reported
    assert not [r for r in caplog.records if "hunter2" in r.getMessage()]


def test_with_recheck_the_file_is_looked_at_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    write(path, "alice:{PLAIN}old\n")
    now = [100.0]
    auth = PasswdFileAuthenticator(path, recheck=1.0, clock=lambda: now[0])
    assert run(auth.authenticate("alice", "old")).name == "alice"
    new = tmp_path / "passwd.new"
    write(new, "alice:{PLAIN}new\n")
    os.replace(new, path)
    now[0] += 0.5  # within the interval: the table read before still answers
    assert run(auth.authenticate("alice", "old")).name == "alice"
    now[0] += 0.5  # one interval after the last look: the change is seen
    assert run(auth.authenticate("alice", "new")).name == "alice"
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("alice", "old"))
