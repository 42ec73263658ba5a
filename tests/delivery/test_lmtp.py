"""LMTP (RFC 2033) over a real 127.0.0.1 socket with ``smtplib.LMTP``, into a real Maildir."""

from __future__ import annotations

import errno
import os
import re
import stat

import pytest

from mailslot.auth.base import TemporaryAuthFailure, User
from mailslot.config import DeliveryConfig
from mailslot.store.wiresize import wire_size

from .conftest import transaction

MESSAGE = (
    b"From: Bob <bob@example.org>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"line one\r\n"
    b".starts with a dot\r\n"
    b"..two dots\r\n"
    b"\r\n"
    b"last line\r\n"
)


def stored_form(sender: str, recipient: str, message: bytes = MESSAGE) -> bytes:
    """What Dovecot's LMTP would store: trace fields on top, LF line ends."""
    trace = f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n".encode()
    return trace + message.replace(b"\r\n", b"\n")


def test_lhlo_announces_size_pipelining_and_enhanced_codes(lmtp_factory):
    server = lmtp_factory(DeliveryConfig(max_message_size=123456))
    client = server.client()
    assert client.has_extn("size") and client.esmtp_features["size"] == "123456"
    assert client.has_extn("pipelining")
    assert client.has_extn("enhancedstatuscodes")
    client.quit()


def test_known_user_gets_250_once_the_message_is_in_new(lmtp_factory):
    server = lmtp_factory()
    client = server.client()
    result = transaction(client, "bob@example.org", ["alice@example.test"], MESSAGE)
    client.quit()
    assert result.rcpt[0][0] == 250
    assert [code for code, _ in result.data] == [250]
    assert result.data[0][1].startswith(b"2.0.0")
    assert server.messages("alice") == [stored_form("bob@example.org", "alice@example.test")]
    assert server.names("alice", "tmp") == []
    assert server.fsync.calls >= 2  # the file and new/


def test_stored_message_gives_back_the_wire_bytes_and_sizes_in_the_name(lmtp_factory):
    server = lmtp_factory()
    client = server.client()
    transaction(client, "bob@example.org", ["alice@example.test"], MESSAGE)
    client.quit()
    [name] = server.names("alice")
    data = (server.maildir("alice") / "new" / name).read_bytes()
    # Dot-stuffing is undone by aiosmtpd; RETR turns LF back into CRLF, giving the message as
    # it was sent, after the trace fields.
    assert b"\n.starts with a dot\n..two dots\n" in data
    trace = b"Return-Path: <bob@example.org>\r\nDelivered-To: alice@example.test\r\n"
    assert data.replace(b"\n", b"\r\n") == trace + MESSAGE
    assert f",S={len(data)},W={wire_size(data)}" in name


def test_unknown_user_is_refused_at_rcpt(lmtp_factory):
    server = lmtp_factory()
    client = server.client()
    result = transaction(client, "bob@example.org", ["nobody@example.test"], MESSAGE)
    client.quit()
    assert result.rcpt == [(550, b"5.1.1 No such user here")]
    assert result.data == []
    assert not server.mail_root.exists()


def test_mixed_recipients_get_one_reply_each_in_rcpt_order(lmtp_factory):
    server = lmtp_factory(DeliveryConfig(quota_messages=1))
    client = server.client()
    # carol gets one message and is then at her quota.
    transaction(client, "x@example.org", ["carol@example.test"], MESSAGE)
    result = transaction(
        client,
        "bob@example.org",
        ["alice@example.test", "nobody@example.test", "carol@example.test", "bob@example.test"],
        MESSAGE,
    )
    client.quit()
    assert [code for code, _ in result.rcpt] == [250, 550, 250, 250]
    assert [(code, text[:5]) for code, text in result.data] == [
        (250, b"2.0.0"),
        (552, b"5.2.2"),
        (250, b"2.0.0"),
    ]
    assert server.messages("alice") == [stored_form("bob@example.org", "alice@example.test")]
    assert server.messages("bob") == [stored_form("bob@example.org", "bob@example.test")]
    assert len(server.messages("carol")) == 1


def test_over_size_is_refused_for_every_recipient(lmtp_factory):
    server = lmtp_factory(DeliveryConfig(max_message_size=1000))
    client = server.client()
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 30
    result = transaction(client, "bob@example.org", ["alice@example.test", "bob@x.test"], big)
    # The connection is still in step: a small message afterwards goes through.
    small = transaction(client, "bob@example.org", ["alice@example.test"], MESSAGE)
    client.quit()
    assert result.data == [(552, b"5.3.4 Message too big for system")] * 2
    assert small.data[0][0] == 250
    assert len(server.messages("alice")) == 1 and server.messages("bob") == []


def test_line_too_long_is_refused_for_every_recipient(lmtp_factory):
    server = lmtp_factory()
    client = server.client()
    long_line = MESSAGE + b"y" * 1200 + b"\r\n"
    result = transaction(client, "bob@example.org", ["alice", "bob"], long_line)
    small = transaction(client, "bob@example.org", ["alice"], MESSAGE)
    client.quit()
    assert result.data == [(500, b"5.6.0 Line too long")] * 2
    assert small.data[0][0] == 250


def test_declared_size_over_the_limit_is_refused_at_mail(lmtp_factory):
    server = lmtp_factory(DeliveryConfig(max_message_size=1000))
    client = server.client()
    code, text = client.mail("bob@example.org", ["SIZE=5000"])
    client.quit()
    assert (code, text) == (552, b"5.3.4 Message too big for system")


def test_over_quota_bytes_is_refused(lmtp_factory):
    server = lmtp_factory(DeliveryConfig(quota_bytes=len(stored_form("b@x.test", "alice")) * 2))
    client = server.client()
    replies = [transaction(client, "b@x.test", ["alice"], MESSAGE).data[0][0] for _ in range(3)]
    client.quit()
    assert replies == [250, 250, 552]
    assert len(server.messages("alice")) == 2


def test_quota_counts_messages_already_read_into_cur(lmtp_factory):
    server = lmtp_factory(DeliveryConfig(quota_messages=2))
    client = server.client()
    transaction(client, "b@x.test", ["alice"], MESSAGE)
    maildir = server.maildir("alice")
    [name] = server.names("alice")
    os.rename(maildir / "new" / name, maildir / "cur" / (name + ":2,S"))
    replies = [transaction(client, "b@x.test", ["alice"], MESSAGE).data[0][0] for _ in range(2)]
    client.quit()
    assert replies == [250, 552]


def test_disk_full_is_451_and_leaves_nothing_behind(lmtp_factory):
    server = lmtp_factory()
    client = server.client()
    server.fsync.error = errno.ENOSPC
    failed = transaction(client, "bob@example.org", ["alice@example.test", "bob"], MESSAGE)
    assert failed.data == [(451, b"4.3.0 Temporary failure, try again later")] * 2
    for user in ("alice", "bob"):
        assert server.names(user, "new") == []
        assert server.names(user, "tmp") == []
        assert server.names(user, "cur") == []
    server.fsync.error = None
    retried = transaction(client, "bob@example.org", ["alice@example.test"], MESSAGE)
    client.quit()
    assert retried.data[0][0] == 250
    assert server.messages("alice") == [stored_form("bob@example.org", "alice@example.test")]


def test_io_error_on_the_directory_fsync_is_451_without_a_visible_message(lmtp_factory):
    server = lmtp_factory()
    client = server.client()
    transaction(client, "b@x.test", ["alice"], MESSAGE)  # creates the maildir
    # The file's fsync succeeds, the fsync of new/ fails: the store must take the file back.
    server.fsync.error = errno.EIO
    server.fsync.only_call = server.fsync.calls + 2
    result = transaction(client, "b@x.test", ["alice"], MESSAGE)
    client.quit()
    assert result.data[0][0] == 451
    assert len(server.messages("alice")) == 1
    assert server.names("alice", "tmp") == []


def test_null_sender_and_disabled_trace_fields(lmtp_factory):
    plain = lmtp_factory(DeliveryConfig(add_return_path=False, add_delivered_to=False))
    traced = lmtp_factory()
    for server in (plain, traced):
        client = server.client()
        assert transaction(client, "<>", ["alice"], MESSAGE).data[0][0] == 250
        client.quit()
    assert plain.messages("alice") == [MESSAGE.replace(b"\r\n", b"\n")]
    assert traced.messages("alice")[0].startswith(b"Return-Path: <>\nDelivered-To: alice\n")


def test_localpart_rule_with_domains(lmtp_factory):
    server = lmtp_factory(DeliveryConfig(recipient="localpart", domains=("example.test",)))
    client = server.client()
    result = transaction(
        client,
        "b@x.test",
        ["Alice@EXAMPLE.test", "alice@other.test", "../alice@example.test", "postmaster"],
        MESSAGE,
    )
    client.quit()
    assert [(code, text[:5]) for code, text in result.rcpt] == [
        (250, b"2.1.5"),
        (550, b"5.1.2"),
        (550, b"5.1.1"),
        (550, b"5.1.1"),
    ]
    [stored] = server.messages("alice")
    # Delivered-To keeps the address as the MTA gave it.
    assert b"\nDelivered-To: Alice@EXAMPLE.test\n" in stored


def test_address_rule_uses_the_whole_address(lmtp_factory):
    from mailslot.auth.memory import MemoryAuthenticator

    users = MemoryAuthenticator({"alice@example.test": "a", "alice": "b"})
    server = lmtp_factory(DeliveryConfig(recipient="address"), users)
    client = server.client()
    result = transaction(client, "b@x.test", ["alice@Example.TEST", "alice@other.test"], MESSAGE)
    client.quit()
    assert [code for code, _ in result.rcpt] == [250, 550]
    assert len(server.messages("alice@example.test")) == 1
    assert server.messages("alice") == []


def test_user_database_outage_is_a_temporary_failure_at_rcpt(lmtp_factory):
    class Down:
        async def authenticate(self, username: str, password: str) -> User:
            raise TemporaryAuthFailure("down")

        async def lookup(self, username: str) -> User | None:
            raise TemporaryAuthFailure("down")

    server = lmtp_factory(users=Down())
    client = server.client()
    result = transaction(client, "b@x.test", ["alice"], MESSAGE)
    client.quit()
    assert result.rcpt == [(451, b"4.3.0 Temporary failure, try again later")]


def test_same_recipient_twice_is_stored_once_and_answered_twice(lmtp_factory):
    server = lmtp_factory()
    client = server.client()
    result = transaction(client, "b@x.test", ["alice", "alice"], MESSAGE)
    client.quit()
    assert [code for code, _ in result.data] == [250, 250]
    assert len(server.messages("alice")) == 1


def test_unix_socket_has_mode_0660_and_speaks_lmtp(lmtp_factory):
    server = lmtp_factory(unix=True)
    mode = stat.S_IMODE(os.stat(server.path).st_mode)
    assert stat.S_ISSOCK(os.stat(server.path).st_mode)
    assert mode == 0o660
    assert [p for p in os.listdir(os.path.dirname(server.path)) if p.endswith(".tmp")] == []
    client = server.client()
    assert transaction(client, "b@x.test", ["alice"], MESSAGE).data[0][0] == 250
    client.quit()


def test_pipelined_transaction_gets_replies_in_order(lmtp_factory):
    import socket

    server = lmtp_factory()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        stream = sock.makefile("rwb")
        assert stream.readline().startswith(b"220 ")
        stream.write(
            b"LHLO c.test\r\nMAIL FROM:<b@x.test>\r\nRCPT TO:<alice>\r\nRCPT TO:<nobody>\r\n"
            b"RCPT TO:<bob>\r\nDATA\r\n"
        )
        stream.flush()
        lines = []
        while not re.match(rb"354", lines[-1] if lines else b""):
            lines.append(stream.readline())
        stream.write(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        stream.flush()
        rest = [stream.readline() for _ in range(3)]
    codes = [line[:4] for line in lines if not line.startswith(b"250-")]
    assert codes == [b"250 ", b"250 ", b"250 ", b"550 ", b"250 ", b"354 "]
    assert [line[:9] for line in rest] == [b"250 2.0.0", b"250 2.0.0", b"221 Bye\r\n"[:9]]


def _plant_symlink(server, user, sub, outside):
    maildir = server.maildir(user)
    for name in ("cur", "new", "tmp"):
        (maildir / name).mkdir(parents=True, exist_ok=True)
    outside.mkdir(exist_ok=True)
    (outside / "canary").write_bytes(b"canary\n")
    if sub == "Maildir":
        for name in ("cur", "new", "tmp"):
            (maildir / name).rmdir()
        maildir.rmdir()
        for name in ("cur", "new", "tmp"):
            (outside / name).mkdir(exist_ok=True)
        maildir.symlink_to(outside)
    else:
        (maildir / sub).rmdir()
        (maildir / sub).symlink_to(outside)


def _files_under(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@pytest.mark.parametrize("sub", ["tmp", "new", "Maildir"])
def test_a_symlinked_maildir_directory_defers_that_recipient_and_writes_nothing_outside(
    lmtp_factory, tmp_path, sub
):
    """Issue 15: a user who makes tmp/ or new/ (or the Maildir) a symlink cannot have the
    server write through it; that recipient gets a 4xx (the mail stays queued), others 250."""
    server = lmtp_factory()
    outside = tmp_path / "outside"
    _plant_symlink(server, "alice", sub, outside)
    before = _files_under(outside)
    client = server.client()
    result = transaction(client, "b@x.test", ["alice", "bob"], MESSAGE)
    client.quit()
    assert [code for code, _ in result.data] == [451, 250]
    assert _files_under(outside) == before
    assert len(server.messages("bob")) == 1
