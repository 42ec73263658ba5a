"""Sessions over real sockets against an in-process server whose Config the test builds:
timers (RFC 1939 section 3), per-user and per-address limits, the failure penalty, IPv6.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from tests.server.conftest import InProcessFactory
from tests.server.inprocess import InProcessServer
from tests.support.maildir import message_files
from tests.support.wire import ConnectionClosed, Pop3Wire

from mailslot.config import LimitsConfig, ListenerConfig

MESSAGES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n"]
POLL_DEADLINE = 15.0


def tls_wire(server: InProcessServer, mode: str = "starttls") -> Pop3Wire:
    context = server.tls_files.client_context()
    host, port = server.address(mode)
    if mode == "implicit":
        return Pop3Wire(host, port, tls_context=context)
    wire = Pop3Wire(host, port)
    assert wire.command("STLS").startswith(b"+OK")
    wire.start_tls(context)
    return wire


def session_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> list[str]:
    deadline = time.monotonic() + POLL_DEADLINE
    while len(found := session_lines(caplog, text)) < count:
        assert time.monotonic() < deadline, f"no log line with {text!r}"
        time.sleep(0.02)
    return found


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_idle_timeout_after_login_closes_with_err_and_deletes_nothing(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess(limits=LimitsConfig(idle_timeout=0.5))
    server.builder().add_all(MESSAGES)
    before = message_files(server.maildir())
    with tls_wire(server, mode) as wire:
        wire.login("alice", server.password())
        assert wire.command("DELE 1").startswith(b"+OK")
        started = time.monotonic()
        reply = wire.line()
        waited = time.monotonic() - started
        assert reply.startswith(b"-ERR"), reply
        assert waited >= 0.5  # the configured timer, a lower bound
        assert wire.read_until_eof() == b""
    assert message_files(server.maildir()) == before
    assert wait_for_log(caplog, "reason=idle timeout user=alice")


def test_login_timeout_closes_with_err(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess(limits=LimitsConfig(login_timeout=0.3))
    with tls_wire(server) as wire:
        assert wire.line().startswith(b"-ERR")
        assert wire.read_until_eof() == b""
    assert wait_for_log(caplog, "reason=login timeout user=-")


def test_activity_keeps_the_session_alive_past_the_idle_timeout(
    inprocess: InProcessFactory,
) -> None:
    server = inprocess(limits=LimitsConfig(idle_timeout=0.4))
    server.builder().add_all(MESSAGES)
    with tls_wire(server) as wire:
        wire.login("alice", server.password())
        started = time.monotonic()
        # Commands more often than the timer fires, for longer than it: the timer restarts.
        while time.monotonic() - started < 1.0:
            assert wire.command("NOOP").startswith(b"+OK")
        assert wire.command("DELE 1").startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
    assert len(message_files(server.maildir())) == 1


def test_per_user_session_limit(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess(limits=LimitsConfig(max_sessions_per_user=1))
    server.builder().add_all(MESSAGES)
    with tls_wire(server) as first:
        first.login("alice", server.password())
        with tls_wire(server) as second:
            assert second.command("USER alice").startswith(b"+OK")
            reply = second.command(f"PASS {server.password()}")
            assert reply.startswith(b"-ERR [IN-USE]"), reply
            # The session goes on in AUTHORIZATION: another user may still log in.
            second.login("carol@example.org", server.password("carol@example.org"))
            assert second.command("QUIT").startswith(b"+OK")
        assert session_lines(caplog, "too many sessions: user=alice")
        assert first.command("STAT").startswith(b"+OK 2 ")
        assert first.command("QUIT").startswith(b"+OK")
    # The slot is free again once the first session has ended.
    with tls_wire(server) as third:
        third.login("alice", server.password())
        assert third.command("QUIT").startswith(b"+OK")


def test_a_dropped_session_frees_its_user_slot(inprocess: InProcessFactory) -> None:
    server = inprocess(limits=LimitsConfig(max_sessions_per_user=1))
    server.builder().add_all(MESSAGES)
    first = tls_wire(server)
    first.login("alice", server.password())
    assert first.command("DELE 1").startswith(b"+OK")
    first.close()  # no QUIT: the server must notice, release the slot and delete nothing
    deadline = time.monotonic() + POLL_DEADLINE
    while True:
        with tls_wire(server) as again:
            assert again.command("USER alice").startswith(b"+OK")
            reply = again.command(f"PASS {server.password()}")
            if reply.startswith(b"+OK"):
                assert again.command("STAT").startswith(b"+OK 2 ")
                assert again.command("QUIT").startswith(b"+OK")
                break
            assert b"[IN-USE]" in reply and time.monotonic() < deadline, reply
        time.sleep(0.02)
    assert len(message_files(server.maildir())) == 2


def test_a_maildrop_lock_refusal_releases_the_user_slot(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With two sessions allowed per user the maildrop lock refuses the second; that refusal
    must give its slot back, or the third attempt would be refused by the counter instead."""
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess(limits=LimitsConfig(max_sessions_per_user=2))
    server.builder().add_all(MESSAGES)
    with tls_wire(server) as holder:
        holder.login("alice", server.password())
        for _ in range(3):
            with tls_wire(server) as other:
                assert other.command("USER alice").startswith(b"+OK")
                assert other.command(f"PASS {server.password()}").startswith(b"-ERR [IN-USE]")
        assert len(session_lines(caplog, "maildrop in use: user=alice")) == 3
        assert not session_lines(caplog, "too many sessions")
        assert holder.command("QUIT").startswith(b"+OK")


def test_per_address_connection_limit(inprocess: InProcessFactory) -> None:
    server = inprocess(limits=LimitsConfig(max_connections_per_ip=2))
    host, port = server.address()
    with Pop3Wire(host, port) as one, Pop3Wire(host, port) as two:
        assert one.greeting.startswith(b"+OK")
        assert two.greeting.startswith(b"+OK")
        with Pop3Wire(host, port) as three:
            assert three.greeting.startswith(b"-ERR [SYS/TEMP]"), three.greeting
            assert three.read_until_eof() == b""
        assert one.command("QUIT").startswith(b"+OK")
        assert one.read_until_eof() == b""
    deadline = time.monotonic() + POLL_DEADLINE
    while True:
        with Pop3Wire(host, port) as later:
            if later.greeting.startswith(b"+OK"):
                break
            assert time.monotonic() < deadline, later.greeting
        time.sleep(0.02)


def test_failed_login_waits_the_configured_delay(inprocess: InProcessFactory) -> None:
    server = inprocess(auth={"failure_delay": 0.3, "failure_delay_max": 0.6})
    with tls_wire(server) as wire:
        assert wire.command("USER alice").startswith(b"+OK")
        started = time.monotonic()
        assert wire.command("PASS wrong").startswith(b"-ERR [AUTH]")
        assert time.monotonic() - started >= 0.3
        wire.login("alice", server.password())
        assert wire.command("QUIT").startswith(b"+OK")


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_ipv6_listener_serves(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess(
        listeners=(
            ListenerConfig(address="::1", port=0, tls="starttls"),
            ListenerConfig(address="::1", port=0, tls="implicit"),
        )
    )
    server.builder().add_all(MESSAGES)
    for mode in ("starttls", "implicit"):
        host, _ = server.address(mode)
        assert host == "::1"
        with tls_wire(server, mode) as wire:
            assert wire.sock.family == socket.AF_INET6
            wire.login("alice", server.password())
            assert wire.command("STAT").startswith(b"+OK 2 ")
            assert wire.command("QUIT").startswith(b"+OK")
    assert wait_for_log(caplog, "peer=[::1]:", 2)


def test_bytes_after_quit_are_not_needed(inprocess: InProcessFactory) -> None:
    """QUIT in AUTHORIZATION closes at once, without waiting for the client."""
    server = inprocess()
    with tls_wire(server) as wire:
        assert wire.command("QUIT").startswith(b"+OK")
        with pytest.raises(ConnectionClosed):
            wire.line()


def test_a_peer_that_closes_before_the_tls_handshake_is_let_go_at_once(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A port probe: connect to the implicit-TLS port and close without a ClientHello.  Its
    # connection must end now (one log line), not at the handshake timeout, which would also
    # hold a shutdown that long.
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess()
    started = time.monotonic()
    for _ in range(3):
        socket.create_connection(server.address("implicit")).close()
    lines = wait_for_log(caplog, "TLS handshake failed", count=3)
    assert time.monotonic() - started < server.config.tls.handshake_timeout / 2, lines
    assert all("timeout" not in line for line in lines)


def test_commands_pipelined_far_past_the_read_ahead_are_all_answered_in_order(
    inprocess: InProcessFactory,
) -> None:
    """While a RETR waits on the client's window, its next commands pile up; reading pauses
    (the server keeps at most its read-ahead) and resumes, and every command is answered."""
    server = inprocess(auth={"allow_plaintext_without_tls": True})
    big = b"Subject: big\n\n" + b"x" * 1000 + b"\n"
    server.builder().add_all([big * 4000])  # ~4 MB: far more than the socket buffers
    count = 30_000  # 180 KB of NOOPs: well over the 64 KiB read-ahead
    host, port = server.address("starttls")
    with Pop3Wire(host, port) as wire:
        wire.login("alice", server.password())
        sender = threading.Thread(
            target=wire.sock.sendall, args=(b"RETR 1\r\n" + b"NOOP\r\n" * count + b"QUIT\r\n",)
        )
        sender.start()
        time.sleep(0.5)  # let the server fill the window and the NOOPs pile up
        assert wire.line().startswith(b"+OK")
        body = wire.multiline()
        assert body.count(b"x" * 1000) == 4000
        replies = [wire.line() for _ in range(count + 1)]
        sender.join()
    assert all(reply == b"+OK\r\n" for reply in replies[:count]), set(replies[:count])
    assert replies[-1].startswith(b"+OK"), replies[-1]


@pytest.mark.parametrize("cache", [0, 100])
def test_snapshot_cache_setting_decides_whether_a_listing_is_reused(
    inprocess: InProcessFactory, cache: int
) -> None:
    """``[store] snapshot_cache`` reaches the store: with room, an unchanged maildrop's next
    open reuses the listing (the same immutable tuple); with 0, every open builds its own."""
    server = inprocess(snapshot_cache=cache)
    store = server.app.store
    for message in MESSAGES:  # names with ,W= as delivered: listings that can be reused
        server.call(store.deliver("alice", message))
    listings = []
    for _ in range(2):
        maildrop = server.call(store.open("alice"))
        listings.append(maildrop.messages)
        server.call(maildrop.close())
    assert [m.uid for m in listings[0]] == [m.uid for m in listings[1]]
    assert (listings[0] is listings[1]) is (cache > 0)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_a_command_in_the_segment_that_ends_the_handshake_is_answered(
    inprocess: InProcessFactory, mode: str
) -> None:
    """TLS hands such bytes over before the session has recorded the handshake; they must be
    kept for it, not dropped with what came in the clear (RFC 2595 section 4)."""
    server = inprocess()
    host, port = server.address(mode)
    context = server.tls_files.client_context()
    with Pop3Wire(host, port, read_greeting=mode == "starttls") as wire:
        if mode == "starttls":
            assert wire.command("STLS").startswith(b"+OK")
        wire.start_tls(context, then=b"CAPA\r\n")
        if mode == "implicit":
            assert wire.line().startswith(b"+OK")  # the greeting
        assert wire.line().startswith(b"+OK")
        capa = wire.multiline()
        assert b"USER" in capa, capa
