"""SIGKILL the server in the middle of an LMTP delivery: no half message, no 250 without mail.

A delivery is acknowledged only after the message is durable in new/ (tmp/, fsync, rename,
fsync of new/).  Killed while DATA is still arriving, or after the final dot but before the
client has read a reply, the server must leave either nothing visible, or — if it did answer
250 — the whole message; and POP3 after a restart serves exactly that.
"""

from __future__ import annotations

import poplib
import socket

import pytest
from tests.support.passwd import PasswdUser
from tests.support.server import Listener, MailslotServer, ServerFactory

BODY = b"".join(
    b"line %05d of a message long enough to arrive in pieces\r\n" % n for n in range(4000)
)
MESSAGE = b"From: a@example.org\r\nTo: dave@example.test\r\nSubject: crash\r\n\r\n" + BODY


def _lmtp(sock: socket.socket, line: bytes, expect: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    reply = _reply(sock)
    assert reply.startswith(expect), reply
    return reply


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.splitlines()[-1][3:4] == b"-":
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:  # the server was killed: no reply came
            break
        if not chunk:
            break
        data += chunk
    return data


def _visible(server: MailslotServer) -> list[bytes]:
    maildir = server.maildir("dave")
    return [
        path.read_bytes()
        for sub in ("new", "cur")
        if (maildir / sub).is_dir()
        for path in sorted((maildir / sub).iterdir())
        if not path.name.startswith(".")
    ]


def _pop3_count(server: MailslotServer) -> int:
    host, port = server.starttls
    client = poplib.POP3(host, port, timeout=30)
    client.stls(server.tls_files.client_context())
    client.user("dave")
    client.pass_(server.password("dave"))
    count, _ = client.stat()
    client.quit()
    return int(count)


@pytest.mark.parametrize("kill_point", ["mid-data", "after-final-dot"])
def test_sigkill_during_lmtp_delivery_leaves_all_or_nothing(
    mailslot_factory: ServerFactory, kill_point: str
) -> None:
    server = mailslot_factory(
        listeners=(Listener("starttls"), Listener("none", protocol="lmtp")),
        extra_users=[PasswdUser("dave", "dave-secret")],
    )
    host, port = server.listener("none", protocol="lmtp")
    acknowledged = False
    with socket.create_connection((host, port), timeout=30) as sock:
        assert _reply(sock).startswith(b"220")
        _lmtp(sock, b"LHLO client.example", b"250")
        _lmtp(sock, b"MAIL FROM:<a@example.org>", b"250")
        _lmtp(sock, b"RCPT TO:<dave@example.test>", b"250")
        _lmtp(sock, b"DATA", b"354")
        if kill_point == "mid-data":
            sock.sendall(MESSAGE[: len(MESSAGE) // 2])
            server.kill()
        else:
            sock.sendall(MESSAGE + b".\r\n")
            server.kill()  # the reply may or may not have been written
            reply = _reply(sock)
            acknowledged = reply.startswith(b"250")
    visible = _visible(server)
    if acknowledged:
        assert len(visible) == 1 and visible[0].endswith(MESSAGE.replace(b"\r\n", b"\n"))
    else:
        # Unacknowledged: nothing, or (killed between the rename and the reply) the whole
        # message, which the MTA would deliver again; never a truncated one.
        assert all(v.endswith(MESSAGE.replace(b"\r\n", b"\n")) for v in visible)
        if kill_point == "mid-data":
            assert visible == []
    server.start()
    assert _pop3_count(server) == len(visible)
