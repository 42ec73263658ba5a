"""``mailslot deliver`` as an MTA runs it: a subprocess, a message on stdin, a sysexits status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.passwd import PasswdUser, write_passwd

SRC = Path(__file__).resolve().parents[2] / "src"
# A configuration needs a listener; `deliver` never opens it.
LISTENER = '[[listener]]\nprotocol = "lmtp"\naddress = "127.0.0.1"\nport = 2424\ntls = "none"\n'
MESSAGE = b"From: bob@example.org\nSubject: hi\n\nbody line\n"


def write_config(directory: Path, *, maildir: str | None = None, delivery: str = "") -> Path:
    passwd = write_passwd(
        directory / "users", [PasswdUser("alice", "x"), PasswdUser("carol@example.test", "y")]
    )
    config = directory / "mailslot.toml"
    config.write_text(
        f'{LISTENER}[auth]\npasswd_file = "{passwd}"\n'
        f'[store]\nmaildir = "{maildir or str(directory / "mail/{user}/Maildir")}"\n'
        # The tests run as root; these deliveries are about the message, not the privileges
        # (tests/server/test_privileges.py drops them).
        '[server]\nrun_as_root = "the test suite runs as root"\n'
        f"[delivery]\n{delivery}\n",
        encoding="utf-8",
    )
    return config


def deliver(config: Path, *args: str, stdin: bytes = MESSAGE) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run(
        [sys.executable, "-m", "mailslot", "deliver", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def stored(directory: Path, user: str) -> list[bytes]:
    new = directory / "mail" / user / "Maildir" / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def test_delivers_by_user_name_with_return_path(tmp_path: Path):
    config = write_config(tmp_path)
    result = deliver(config, "-u", "alice", "-f", "bob@example.org")
    assert (result.returncode, result.stderr) == (0, b"")
    assert stored(tmp_path, "alice") == [b"Return-Path: <bob@example.org>\n" + MESSAGE]


def test_delivers_by_address_and_strips_the_mbox_from_line(tmp_path: Path):
    config = write_config(tmp_path)
    piped = b"From bob@example.org  Thu Jan  1 00:00:00 2026\n" + MESSAGE.replace(b"\n", b"\r\n")
    result = deliver(config, "-a", "Alice@example.test", stdin=piped)
    assert result.returncode == 0, result.stderr
    assert stored(tmp_path, "alice") == [
        b"Return-Path: <bob@example.org>\nDelivered-To: Alice@example.test\n" + MESSAGE
    ]


def test_trace_fields_postfix_already_added_are_not_repeated(tmp_path: Path):
    config = write_config(tmp_path)
    top = (
        b"From MAILER-DAEMON  Thu Jan  1 00:00:00 2026\n"
        b"Return-Path: <>\n"
        b"X-Original-To: alice@example.test\n"
        b"Delivered-To: alice@example.test\n"
    )
    result = deliver(config, "-a", "alice@example.test", stdin=top + MESSAGE)
    assert result.returncode == 0, result.stderr
    assert stored(tmp_path, "alice") == [top.partition(b"\n")[2] + MESSAGE]


def test_address_rule_full_address(tmp_path: Path):
    config = write_config(tmp_path, delivery='recipient = "address"')
    assert deliver(config, "-a", "carol@EXAMPLE.test").returncode == 0
    assert len(stored(tmp_path, "carol@example.test")) == 1


@pytest.mark.parametrize(
    "args",
    [("-u", "nobody"), ("-a", "nobody@example.test"), ("-u", "../alice")],
)
def test_unknown_user_is_67(tmp_path: Path, args: tuple[str, str]):
    result = deliver(write_config(tmp_path), *args)
    assert result.returncode == 67
    assert result.stderr == b"5.1.1 mailslot deliver: No such user here\n"
    assert not (tmp_path / "mail").exists()


def test_foreign_domain_is_67(tmp_path: Path):
    config = write_config(tmp_path, delivery='domains = ["example.test"]')
    result = deliver(config, "-a", "alice@elsewhere.test")
    assert (result.returncode, result.stderr) == (
        67,
        b"5.1.2 mailslot deliver: Not a local domain\n",
    )


@pytest.mark.parametrize(
    "stdin",
    [b"", b"\n\n", b"From bob@example.org  Thu Jan  1 00:00:00 2026\n", b"\x00\x01binary"],
)
def test_empty_or_non_message_input_is_65(tmp_path: Path, stdin: bytes):
    result = deliver(write_config(tmp_path), "-u", "alice", stdin=stdin)
    assert result.returncode == 65
    assert result.stderr.count(b"\n") == 1
    assert stored(tmp_path, "alice") == []


def test_store_failure_is_75_and_leaves_nothing(tmp_path: Path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    config = write_config(tmp_path, maildir=f"{blocker}/{{user}}/Maildir")
    result = deliver(config, "-u", "alice")
    assert result.returncode == 75
    assert result.stderr == b"4.3.0 mailslot deliver: Temporary failure, try again later\n"


@pytest.mark.parametrize("sub", ["tmp", "new"])
def test_a_symlinked_tmp_or_new_is_75_and_nothing_is_written_through_it(tmp_path: Path, sub: str):
    """Issue 15: the user's Maildir/tmp -> elsewhere must not get the server's write."""
    config = write_config(tmp_path)
    maildir = tmp_path / "mail" / "alice" / "Maildir"
    for name in ("cur", "new", "tmp"):
        (maildir / name).mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (maildir / sub).rmdir()
    (maildir / sub).symlink_to(outside)
    result = deliver(config, "-u", "alice")
    assert result.returncode == 75
    assert result.stderr == b"4.3.0 mailslot deliver: Temporary failure, try again later\n"
    assert list(outside.iterdir()) == []


def test_over_quota_and_too_big_are_77(tmp_path: Path):
    config = write_config(tmp_path, delivery="quota_messages = 1\nmax_message_size = 200")
    assert deliver(config, "-u", "alice").returncode == 0
    full = deliver(config, "-u", "alice")
    assert (full.returncode, full.stderr) == (77, b"5.2.2 mailslot deliver: Mailbox full\n")
    big = deliver(config, "-u", "alice", stdin=MESSAGE + b"x" * 300 + b"\n")
    assert (big.returncode, big.stderr) == (
        77,
        b"5.3.4 mailslot deliver: Message too big for system\n",
    )
    assert len(stored(tmp_path, "alice")) == 1


def test_broken_config_is_78(tmp_path: Path):
    config = tmp_path / "broken.toml"
    config.write_text("[delivery]\nrecipient = 'mailbox'\n", encoding="utf-8")
    result = deliver(config, "-u", "alice")
    assert result.returncode == 78
    assert result.stderr.startswith(b"mailslot deliver: configuration error: ")
    assert result.stderr.count(b"\n") == 1
    missing = deliver(tmp_path / "missing.toml", "-u", "alice")
    assert missing.returncode == 78


def test_config_without_passwd_file_is_78(tmp_path: Path):
    config = tmp_path / "mailslot.toml"
    config.write_text(LISTENER + f'[store]\nmaildir = "{tmp_path}/{{user}}"\n', encoding="utf-8")
    result = deliver(config, "-u", "alice")
    assert result.returncode == 78
    assert b"passwd_file" in result.stderr
