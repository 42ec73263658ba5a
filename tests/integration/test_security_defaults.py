"""Secure defaults over real sockets: no plaintext login, uniform failures, delays and limits.

RFC 2595 section 2 and RFC 8314: without ``allow_plaintext_without_tls`` a password never
crosses an unencrypted connection, and CAPA does not offer USER or SASL there.  RFC 3206
``[AUTH]`` answers every failed login alike, whatever the reason.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import time
from pathlib import Path

import pytest
from tests.support.passwd import PasswdUser
from tests.support.server import Listener, MailslotServer, ServerFactory
from tests.support.wire import ConnectionClosed, Pop3Wire


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")


def _capa(wire: Pop3Wire) -> list[bytes]:
    assert wire.command("CAPA").startswith(b"+OK")
    return wire.multiline().split(b"\r\n")[:-2]


def _closed(wire: Pop3Wire) -> bool:
    """Whether the server closed the connection (reading what it sent before closing)."""
    try:
        wire.read_until_eof()
    except TimeoutError:
        return False
    return True


# -- plaintext ---------------------------------------------------------------------------------


def test_no_login_on_plaintext_by_default(mailslot: MailslotServer) -> None:
    password = mailslot.password("alice")
    with Pop3Wire(*mailslot.starttls) as wire:
        caps = _capa(wire)
        assert b"STLS" in caps
        assert b"USER" not in caps
        assert not any(cap.startswith(b"SASL") for cap in caps)
    # One connection per attempt: each refusal also counts as a bad command.
    with Pop3Wire(*mailslot.starttls) as wire:
        assert wire.command("USER alice").startswith(b"-ERR [AUTH]")
        assert wire.command("PASS " + password).startswith(b"-ERR")
    with Pop3Wire(*mailslot.starttls) as wire:
        reply = wire.command("AUTH PLAIN " + _plain("alice", password))
        assert reply.startswith(b"-ERR [AUTH]"), reply
    with Pop3Wire(*mailslot.starttls) as wire:
        assert wire.command("AUTH PLAIN").startswith(b"-ERR [AUTH]")
    with Pop3Wire(*mailslot.starttls) as wire:
        wire.send(f"USER alice\r\nPASS {password}\r\nSTAT\r\n")
        assert wire.line().startswith(b"-ERR [AUTH]")
        assert wire.line().startswith(b"-ERR")
        assert wire.line().startswith(b"-ERR")  # never reached TRANSACTION


def test_plaintext_login_when_allowed(mailslot_factory: ServerFactory) -> None:
    server = mailslot_factory(
        listeners=[Listener("starttls"), Listener("none")], allow_plaintext=True
    )
    message = server.builder("alice").add(b"Subject: x\n\nplain\n")
    for tls in ("starttls", "none"):
        with Pop3Wire(*server.listener(tls)) as wire:
            caps = _capa(wire)
            assert b"USER" in caps
            assert any(cap.startswith(b"SASL") and b"PLAIN" in cap for cap in caps)
            assert (b"STLS" in caps) == (tls == "starttls")
            wire.login("alice", server.password("alice"))
            assert wire.command("STAT") == b"+OK 1 %d\r\n" % message.size
            assert wire.command("QUIT").startswith(b"+OK")
        with Pop3Wire(*server.listener(tls)) as wire:
            reply = wire.command("AUTH PLAIN " + _plain("alice", server.password("alice")))
            assert reply.startswith(b"+OK"), reply
            wire.command("QUIT")


# -- uniform failures ------------------------------------------------------------------------


def _attempt(server: MailslotServer, user: bytes, password: bytes) -> tuple[bytes, bytes]:
    context = server.tls_files.client_context()
    with Pop3Wire(*server.implicit, tls_context=context) as wire:
        user_reply = wire.command(b"USER " + user)
        pass_reply = wire.command(b"PASS " + password)
        wire.command("QUIT")
        return user_reply, pass_reply


def test_unknown_user_and_wrong_password_get_the_same_reply(mailslot: MailslotServer) -> None:
    wrong_password = _attempt(mailslot, b"alice", b"not-her-password")
    unknown_user = _attempt(mailslot, b"nobody-here", b"not-her-password")
    assert wrong_password[1].startswith(b"-ERR [AUTH]"), wrong_password
    assert unknown_user == wrong_password

    context = mailslot.tls_files.client_context()
    replies = []
    for user in ("alice", "nobody-here"):
        with Pop3Wire(*mailslot.implicit, tls_context=context) as wire:
            replies.append(wire.command("AUTH PLAIN " + _plain(user, "wrong")))
    assert replies[0].startswith(b"-ERR [AUTH]")
    assert replies[0] == replies[1]


HOSTILE_NAMES = [
    b"../x",
    b"../../../../tmp/evil",
    b"a/b",
    b"/etc/passwd",
    b"..",
    b".hidden",
    b"alice/../bob",
    b"x" * 240,  # as long as a 255-octet command line allows
    "\u00e9l\u00e8ve".encode(),  # UTF-8, valid but unknown
    b"e\xcc\x81",  # not NFC
    b"{user}",
    b"%2e%2e%2fx",
]

# Control bytes inside the command line, or a line over 255 octets: the line may be refused
# before it is a user name.
CONTROL_NAMES = [b"x\x00y", b"x\ry", b"alice\x00", b"x\x1b[2Jy", b"x" * 300]


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def _outside_mail_root(server: MailslotServer, before: set[str], after: set[str]) -> set[str]:
    mail = str(server.mail_root.relative_to(server.directory.parent))
    logs = {str(server.log_path.relative_to(server.directory.parent))}
    return {p for p in after - before if not p.startswith(mail + "/") and p not in logs}


def test_hostile_user_names_fail_like_a_wrong_password(mailslot_factory: ServerFactory) -> None:
    mailslot = mailslot_factory(failure_delay=0.0)
    top = mailslot.directory.parent
    before = _tree(top)
    mailslot.builder("alice").add(b"Subject: x\n\nx\n")
    reference = _attempt(mailslot, b"alice", b"wrong-password")
    assert reference[1].startswith(b"-ERR [AUTH]")
    for name in HOSTILE_NAMES:
        assert _attempt(mailslot, name, b"wrong-password") == reference, name
        # ...and the right password of a real user does not help either
        assert _attempt(mailslot, name, b"alice-secret") == reference, name
    for name in CONTROL_NAMES:
        user_reply, pass_reply = _attempt(mailslot, name, b"alice-secret")
        assert user_reply.startswith(b"-ERR") or pass_reply == reference[1], name
        assert pass_reply.startswith(b"-ERR"), name
    context = mailslot.tls_files.client_context()
    for name in HOSTILE_NAMES:
        with Pop3Wire(*mailslot.implicit, tls_context=context) as wire:
            # The continuation line has the larger SASL line cap, so long names fit.
            assert wire.command(b"AUTH PLAIN") == b"+ \r\n"
            raw = base64.b64encode(b"\0" + name + b"\0alice-secret")
            assert wire.command(raw).startswith(b"-ERR [AUTH]"), name
    new = _outside_mail_root(mailslot, before, _tree(top))
    assert new == set()
    # Nothing but alice's own maildrop was created under the mail root.
    assert {p.name for p in mailslot.mail_root.iterdir()} == {"alice"}
    assert not Path("/tmp/evil").exists()
    assert mailslot.running


# Three byte strings that a lossy decoding ("replace") all made the account j\ufffdrg.
NOT_UTF8_NAMES = [b"j\xf6rg", b"j\xe4rg", b"j\xffrg", b"\xff\xfe"]


def test_user_names_that_are_not_utf8_are_refused_before_lookup(
    mailslot_factory: ServerFactory,
) -> None:
    lossy = PasswdUser("j\ufffdrg", "joerg-secret")
    server = mailslot_factory(failure_delay=0.0, extra_users=[lossy])
    server.builder(lossy.name).add(b"Subject: x\n\nx\n")
    context = server.tls_files.client_context()
    for name in NOT_UTF8_NAMES:
        with Pop3Wire(*server.implicit, tls_context=context) as wire:
            assert wire.command(b"USER " + name).startswith(b"-ERR [AUTH]"), name
            assert wire.command(b"PASS joerg-secret").startswith(b"-ERR"), name
            assert wire.command(b"STAT").startswith(b"-ERR"), name
        authcid = base64.b64encode(b"\0" + name + b"\0joerg-secret")
        # The authorisation identity is a user name too.
        authzid = base64.b64encode(name + b"\0" + lossy.name.encode() + b"\0joerg-secret")
        for raw in (authcid, authzid):
            with Pop3Wire(*server.implicit, tls_context=context) as wire:
                assert wire.command(b"AUTH PLAIN " + raw).startswith(b"-ERR [AUTH]"), name
                assert wire.command(b"AUTH PLAIN") == b"+ \r\n"
                assert wire.command(raw).startswith(b"-ERR [AUTH]"), name
    log = server.log()
    assert "login: user=" not in log
    assert "login failed" not in log, "refused before lookup, not checked"
    # The account itself is reachable by its own UTF-8 spelling only.
    with Pop3Wire(*server.implicit, tls_context=context) as wire:
        wire.login(lossy.name, lossy.password)
        assert wire.command("QUIT").startswith(b"+OK")


def test_crlf_injection_in_user_name_does_not_log_in(mailslot: MailslotServer) -> None:
    context = mailslot.tls_files.client_context()
    with Pop3Wire(*mailslot.implicit, tls_context=context) as wire:
        wire.send(b"USER nobody\rPASS alice-secret\r\n")
        first = wire.line()
        assert wire.command("PASS alice-secret").startswith(b"-ERR"), first
        assert wire.command("STAT").startswith(b"-ERR")


# -- failure delay -----------------------------------------------------------------------------


def _fail_login(wire: Pop3Wire) -> bytes:
    assert wire.command("USER alice").startswith(b"+OK")
    return wire.command("PASS wrong-password")


def test_failed_logins_delay_that_address_only(mailslot_factory: ServerFactory) -> None:
    delay = 1.0
    server = mailslot_factory(allow_plaintext=True, failure_delay=delay, failure_delay_max=8.0)
    host, port = server.starttls
    with Pop3Wire(host, port, source_address=("127.0.0.1", 0)) as first:
        assert _fail_login(first).startswith(b"-ERR [AUTH]")
        assert first.command("USER alice").startswith(b"+OK")
        # A second failure from 127.0.0.1: its reply must wait at least the configured delay.
        started = time.monotonic()
        first.send(b"PASS wrong-password\r\n")
        # Meanwhile 127.0.0.2 logs in, works and logs out without waiting for 127.0.0.1.
        with Pop3Wire(host, port, source_address=("127.0.0.2", 0)) as other:
            other.login("alice", server.password("alice"))
            assert other.command("STAT").startswith(b"+OK")
            assert other.command("QUIT").startswith(b"+OK")
        readable, _, _ = select.select([first.sock], [], [], 0)
        assert readable == [], "127.0.0.1's delayed reply came before 127.0.0.2 was done"
        assert first.line().startswith(b"-ERR [AUTH]")
        assert time.monotonic() - started >= delay  # a lower bound on a configured delay


# -- limits ------------------------------------------------------------------------------------


def test_overlong_line_is_refused_and_server_stays_up(mailslot: MailslotServer) -> None:
    with Pop3Wire(*mailslot.starttls) as wire:
        wire.send(b"USER " + b"a" * 10_000 + b"\r\n")
        try:
            reply = wire.line()
        except ConnectionClosed:
            reply = b""
        assert reply == b"" or reply.startswith(b"-ERR"), reply
    with Pop3Wire(*mailslot.implicit, tls_context=mailslot.tls_files.client_context()) as wire:
        wire.login("alice", mailslot.password("alice"))
        assert wire.command("QUIT").startswith(b"+OK")


def test_line_of_exactly_the_limit_is_accepted(mailslot: MailslotServer) -> None:
    # RFC 2449 section 4: 255 octets including CRLF.
    with Pop3Wire(*mailslot.implicit, tls_context=mailslot.tls_files.client_context()) as wire:
        line = b"USER " + b"a" * (255 - 2 - 5)
        assert len(line + b"\r\n") == 255
        assert wire.command(line).startswith(b"+OK")


def test_bad_commands_before_login_close_the_connection(mailslot: MailslotServer) -> None:
    with Pop3Wire(*mailslot.starttls) as wire:
        assert wire.command("XYZZY").startswith(b"-ERR")
        assert wire.command("RETR 1").startswith(b"-ERR")
        third = wire.command("FOO bar")
        assert third.startswith(b"-ERR"), third
        assert _closed(wire), "still open after 3 bad commands before login"


def test_login_timeout_closes_idle_connection(mailslot_factory: ServerFactory) -> None:
    server = mailslot_factory(limits={"login_timeout": 1.0})
    with Pop3Wire(*server.starttls) as wire:
        assert wire.greeting.startswith(b"+OK")
        rest = wire.read_until_eof()  # the socket timeout (30 s) is only a safety net
        assert rest == b"" or rest.startswith(b"-ERR"), rest
    context = server.tls_files.client_context()
    with Pop3Wire(*server.implicit, tls_context=context) as wire:
        rest = wire.read_until_eof()
        assert rest == b"" or rest.startswith(b"-ERR"), rest
        assert wire.clean_tls_close is not None


def test_max_connections_per_ip(mailslot_factory: ServerFactory) -> None:
    server = mailslot_factory(limits={"max_connections_per_ip": 3})
    host, port = server.starttls
    # 127.0.0.3 is used only here, so the readiness probes from 127.0.0.1 do not count.
    held = [Pop3Wire(host, port, source_address=("127.0.0.3", 0)) for _ in range(3)]
    try:
        for wire in held:
            assert wire.greeting.startswith(b"+OK")
        with Pop3Wire(host, port, source_address=("127.0.0.3", 0), read_greeting=False) as extra:
            rest = extra.read_until_eof()
            assert rest.startswith(b"-ERR"), rest
            assert b"\r\n" in rest and rest.count(b"\r\n") == 1, rest
        with Pop3Wire(host, port, source_address=("127.0.0.4", 0)) as other:
            assert other.greeting.startswith(b"+OK")
        assert held[0].command("CAPA").startswith(b"+OK")
    finally:
        for wire in held:
            wire.close()


# -- hostile maildir contents --------------------------------------------------------------------


def test_symlink_fifo_and_directory_in_cur_are_never_served(
    mailslot: MailslotServer, tmp_path: Path
) -> None:
    builder = mailslot.builder("alice")
    real = builder.add(b"Subject: real\n\nthe only message\n")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"Subject: secret\n\nTOP SECRET\n")
    cur = mailslot.maildir("alice") / "cur"
    os.symlink(secret, cur / f"{builder.next_base()}:2,S")
    os.symlink(secret, mailslot.maildir("alice") / "new" / builder.next_base())
    os.mkfifo(cur / f"{builder.next_base()}:2,")
    (cur / f"{builder.next_base()}:2,").mkdir()
    context = mailslot.tls_files.client_context()
    with Pop3Wire(*mailslot.implicit, tls_context=context) as wire:
        wire.login("alice", mailslot.password("alice"))
        assert wire.command("STAT") == b"+OK 1 %d\r\n" % real.size
        assert wire.command("RETR 1").startswith(b"+OK")
        assert wire.multiline() == real.retr_wire
        assert wire.command("RETR 2").startswith(b"-ERR")
        assert wire.command("QUIT").startswith(b"+OK")
    assert secret.read_bytes() == b"Subject: secret\n\nTOP SECRET\n"


@pytest.mark.parametrize("address", ["::1"])
def test_ipv6_listener(mailslot_factory: ServerFactory, address: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"::1 is not configured on this machine: {exc}")
    server = mailslot_factory(listeners=[Listener("implicit", address)])
    message = server.builder("alice").add(b"Subject: v6\n\nover IPv6\n")
    context = server.tls_files.client_context()
    with Pop3Wire(*server.implicit, tls_context=context, server_hostname="::1") as wire:
        wire.login("alice", server.password("alice"))
        assert wire.command("RETR 1").startswith(b"+OK")
        assert wire.multiline() == message.retr_wire
        wire.command("QUIT")
