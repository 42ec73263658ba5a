"""End to end with a real Postfix (Debian's package): swaks -> Postfix smtpd -> mailslot.

Postfix hands mail over LMTP (``local_transport = lmtp:inet:...`` and ``lmtp:unix:...``) or pipes
it to ``mailbox_command = ... mailslot deliver -a "$RECIPIENT"``; the tests read the Maildir
and, through ``mailslot serve``, fetch the message with poplib.  Postfix needs root (it drops
to ``mail_owner = postfix``); each test runs a private instance (:mod:`.postfix`).
"""

from __future__ import annotations

import grp
import os
import poplib
import pwd
import re
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.passwd import PasswdUser, write_passwd
from tests.support.programs import in_ci, require_program
from tests.support.server import free_port

from mailslot.config import DeliveryConfig

from . import unprivileged
from .postfix import Postfix

pytestmark = pytest.mark.slow

# Date and Message-ID are present so Postfix's cleanup adds nothing but its Received field.
SENT = (
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"Message-ID: <e2e@example.org>\r\n"
    b"From: Bob <bob@example.org>\r\n"
    b"To: demo@example.test\r\n"
    b"Subject: end to end\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line starting with a dot\r\n"
    b"last line\r\n"
)


@pytest.fixture
def postfix_factory() -> Iterator[object]:
    require_program("postfix")
    require_program("swaks")
    if os.geteuid() != 0:
        message = "Postfix must be started as root (it drops to mail_owner = postfix)"
        if in_ci():
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    instances: list[Postfix] = []

    def make(settings: dict[str, str]) -> Postfix:
        instance = Postfix(free_port(), settings)
        instances.append(instance)
        return instance

    yield make
    for instance in instances:
        instance.stop()
        instance.remove()


def swaks(postfix: Postfix, recipients: str, tmp_path: Path) -> str:
    message = tmp_path / "message.eml"
    # swaks ends the data with CRLF . CRLF itself, adding a CRLF after a final one.
    message.write_bytes(SENT.removesuffix(b"\r\n"))
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{postfix.smtp_port}",
            "--from",
            "bob@example.org",
            "--to",
            recipients,
            "--data",
            str(message),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def new_files(maildir: Path) -> list[Path]:
    new = maildir / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def split_received(stored: bytes, trace: bytes) -> bytes:
    """``stored`` must be ``trace`` + Postfix's Received field + the sent message (LF form)."""
    assert stored.startswith(trace), stored[:300]
    rest = stored[len(trace) :]
    match = re.match(rb"Received: [^\n]*\n(?:[ \t][^\n]*\n)*", rest)
    assert match is not None, rest[:300]
    return rest[match.end() :]


def test_postfix_over_lmtp_into_mailslot_serve_then_pop3(
    postfix_factory, mailslot_factory, tls_files, tmp_path
):
    lmtp_port = free_port()
    server = mailslot_factory(start=False, extra_users=[PasswdUser("demo", "demo-secret")])
    with server.config_path.open("a", encoding="utf-8") as config:
        config.write(
            f'[[listener]]\nprotocol = "lmtp"\naddress = "127.0.0.1"\nport = {lmtp_port}\n'
            'tls = "none"\n'
        )
    server.start()
    _wait_for_lmtp(lmtp_port)
    postfix = postfix_factory({"local_transport": f"lmtp:inet:127.0.0.1:{lmtp_port}"})
    postfix.start()

    # Two recipients in one transaction: Postfix sends both in one LMTP session and gets one
    # reply each; the unknown one bounces with our 5.1.1.
    swaks(postfix, "demo@example.test,nobody@example.test", tmp_path)
    maildir = server.maildir("demo")
    postfix.wait_for(lambda: new_files(maildir), "the message in demo's Maildir")
    postfix.wait_for(lambda: "nobody@example.test" in postfix.log(), "the bounce")
    postfix.wait_for(lambda: "status=bounced" in postfix.log(), "the bounce")

    [path] = new_files(maildir)
    stored = path.read_bytes()
    trace = b"Return-Path: <bob@example.org>\nDelivered-To: demo@example.test\n"
    assert split_received(stored, trace) == SENT.replace(b"\r\n", b"\n")
    log = postfix.log()
    assert re.search(r"to=<demo@example.test>.*status=sent \(250 2\.0\.0", log), log
    assert re.search(r"to=<nobody@example.test>.*status=bounced.*550 5\.1\.1", log), log

    host, port = server.starttls
    client = poplib.POP3(host, port, timeout=30)
    try:
        client.stls(tls_files.client_context())
        client.user("demo")
        client.pass_("demo-secret")
        _, lines, _ = client.retr(1)
    finally:
        client.quit()
    retr = b"".join(line + b"\r\n" for line in lines)
    assert retr == stored.replace(b"\n", b"\r\n")
    assert retr.endswith(SENT)


def test_postfix_over_lmtp_unix_socket(postfix_factory, lmtp_factory, tmp_path):
    postfix = postfix_factory({})
    socket_path = postfix.directory / "lmtp.sock"
    server = lmtp_factory(
        DeliveryConfig(domains=("example.test",)), unix=True, socket_path=socket_path
    )
    # 0660: the administrator gives the socket's group to the MTA (here Postfix's group).
    os.chown(socket_path, -1, grp.getgrnam("postfix").gr_gid)
    postfix.set("local_transport", f"lmtp:unix:{socket_path}")
    postfix.start()
    swaks(postfix, "alice@example.test", tmp_path)
    postfix.wait_for(lambda: server.messages("alice"), "the message in alice's Maildir")
    [stored] = server.messages("alice")
    trace = b"Return-Path: <bob@example.org>\nDelivered-To: alice@example.test\n"
    assert split_received(stored, trace) == SENT.replace(b"\r\n", b"\n")


def test_postfix_mailbox_command_runs_mailslot_deliver(postfix_factory, tmp_path):
    postfix = postfix_factory({})
    # local(8) runs mailbox_command only for a UNIX account, with that account's privileges:
    # `nobody` is one every system has.
    account = pwd.getpwnam("nobody")
    runtime = unprivileged.find("nobody", postfix.directory)
    if runtime is None:
        message = "no Python that user nobody can run mailslot with"
        if in_ci():
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    python, pythonpath = runtime
    mail_root = postfix.directory / "mail"
    mail_root.mkdir()
    os.chown(mail_root, account.pw_uid, account.pw_gid)
    passwd = write_passwd(postfix.directory / "users", [PasswdUser("nobody", "unused")])
    passwd.chmod(0o644)
    config = postfix.directory / "mailslot.toml"
    config.write_text(
        '[[listener]]\nprotocol = "lmtp"\naddress = "127.0.0.1"\nport = 2424\ntls = "none"\n'
        f'[auth]\npasswd_file = "{passwd}"\n'
        f'[store]\nmaildir = "{mail_root}/{{user}}/Maildir"\n',
        encoding="utf-8",
    )
    config.chmod(0o644)
    postfix.set("local_transport", "local")
    postfix.set(
        "mailbox_command",
        f"/usr/bin/env PYTHONPATH={pythonpath} {python} -m mailslot deliver "
        f'--config {config} -a "$RECIPIENT"',
    )
    postfix.start()

    swaks(postfix, "nobody@example.test", tmp_path)
    maildir = mail_root / "nobody" / "Maildir"
    postfix.wait_for(lambda: new_files(maildir), "the message in nobody's Maildir")
    [path] = new_files(maildir)
    stored = path.read_bytes()
    assert os.stat(path).st_uid == account.pw_uid
    # local(8) prepends From_, Return-Path, X-Original-To and Delivered-To; the From_ line
    # goes, its trace fields stay and are not repeated.
    assert not stored.startswith(b"From ")
    assert stored.count(b"Return-Path:") == 1 and stored.count(b"Delivered-To:") == 1
    assert stored.startswith(b"Return-Path: <bob@example.org>\n")
    assert stored.endswith(SENT.replace(b"\r\n", b"\n"))
    postfix.wait_for(lambda: "status=sent" in postfix.log(), "the delivery log line")
    assert "delivered to command" in postfix.log()


def _wait_for_lmtp(port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            with smtplib.LMTP("127.0.0.1", port, timeout=5) as client:
                client.noop()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling a subprocess coming up, not a pace
