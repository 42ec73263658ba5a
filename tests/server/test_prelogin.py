"""The login phase over real sockets: a deadline from the accept, and connections counted
from the accept (issue 15, items 5 and 6).

Before login a client has ``[limits] login_timeout`` in all, counted from the accept: bytes
trickled in (a command, a PROXY header, a ClientHello) do not move it, as an inactivity timer
would.  After login the RFC 1939 section 3 autologout timer moves with each command.  Every
accepted connection takes a slot in the per-address and total limits at once, before its
PROXY header or TLS handshake; over a limit it is closed at once and the log gets a line per
address and window, not a line per connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.server.conftest import InProcessFactory
from tests.server.test_sessions import tls_wire, wait_for_log
from tests.support.server import Listener, MailslotServer, ServerFactory
from tests.support.wire import Pop3Wire

from mailslot.config import LimitsConfig, ListenerConfig

LOGIN_TIMEOUT = 1.0
INTERVAL = 0.2  # between trickled bytes: far less than the login timeout
# How long a trickler keeps going: well past the login deadline, so that a server that moves
# the deadline on every byte keeps the connection open all along (a bound, not a threshold).
TRICKLE_FOR = 4 * LOGIN_TIMEOUT
POLL_DEADLINE = 15.0
OTHER_SOURCE = "127.0.0.2"  # loopback is all of 127.0.0.0/8 on Linux


def trickle(sock: socket.socket, data: bytes) -> tuple[bytes, bool]:
    """Send ``data`` over and over, a byte per ``INTERVAL``, for up to ``TRICKLE_FOR``.

    Returns what the server sent and whether it closed the connection meanwhile.
    """
    received = bytearray()
    started = time.monotonic()
    position = 0
    while time.monotonic() - started < TRICKLE_FOR:
        try:
            sock.send(data[position % len(data) : position % len(data) + 1])
        except OSError:
            return bytes(received), True
        position += 1
        readable, _, _ = select.select([sock], [], [], INTERVAL)
        if readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return bytes(received), True
            if not chunk:
                return bytes(received), True
            received += chunk
    return bytes(received), False


def client_hello() -> bytes:
    """The first flight of a TLS client, as bytes to trickle."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# -- the login deadline -------------------------------------------------------------------------


def test_a_command_trickled_a_byte_at_a_time_is_cut_off_at_the_login_deadline(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess(limits=LimitsConfig(login_timeout=LOGIN_TIMEOUT))
    with socket.create_connection(server.address("starttls"), timeout=POLL_DEADLINE) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        # Activity first: a whole command and its reply (trickled, one command takes longer
        # than the deadline itself, so its reply would race the deadline).
        sock.sendall(b"CAPA\r\n")
        assert reader.readline().startswith(b"+OK")
        while reader.readline() != b".\r\n":
            pass
        received, closed = trickle(sock, b"CAPA\r\n")
    assert closed, received
    # Then the login deadline anyway, whatever the client kept sending.
    assert received.endswith(b"-ERR Login timeout, disconnecting.\r\n"), received
    assert wait_for_log(caplog, "reason=login timeout user=-")


@pytest.mark.parametrize("mode", ["starttls", "none"])
def test_a_proxy_header_trickled_a_byte_at_a_time_is_cut_off_at_the_login_deadline(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    listener = ListenerConfig(address="127.0.0.1", port=0, tls=mode, proxy_protocol=True)
    server = inprocess(limits=LimitsConfig(login_timeout=LOGIN_TIMEOUT), listeners=(listener,))
    with socket.create_connection(server.address(mode), timeout=POLL_DEADLINE) as sock:
        # 43 octets at INTERVAL each take longer than TRICKLE_FOR: never complete.
        received, closed = trickle(sock, b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 110\r\n")
    assert closed
    assert received == b""  # nothing is sent before a complete header
    assert wait_for_log(caplog, "PROXY header refused, closing: no complete header in time")


def test_a_client_hello_trickled_a_byte_at_a_time_is_cut_off_at_the_login_deadline(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    # [tls] handshake_timeout stays at 10 s: the login deadline is the one that ends it.
    server = inprocess(limits=LimitsConfig(login_timeout=LOGIN_TIMEOUT))
    with socket.create_connection(server.address("implicit"), timeout=POLL_DEADLINE) as sock:
        received, closed = trickle(sock, client_hello())
    assert closed
    assert received == b""
    assert wait_for_log(caplog, "TLS handshake failed: login timeout")


def test_an_stls_handshake_trickled_is_cut_off_at_the_login_deadline(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess(limits=LimitsConfig(login_timeout=LOGIN_TIMEOUT))
    with socket.create_connection(server.address("starttls"), timeout=POLL_DEADLINE) as sock:
        assert sock.recv(512).startswith(b"+OK")
        sock.sendall(b"STLS\r\n")
        assert sock.recv(512).startswith(b"+OK")
        received, closed = trickle(sock, client_hello())
    assert closed
    assert received == b""
    assert wait_for_log(caplog, "TLS handshake failed: login timeout")


def test_whole_commands_before_login_do_not_move_the_login_deadline(
    inprocess: InProcessFactory,
) -> None:
    server = inprocess(limits=LimitsConfig(login_timeout=LOGIN_TIMEOUT))
    with Pop3Wire(*server.address("starttls")) as wire:
        started = time.monotonic()
        reply = b"+OK"
        while reply.startswith(b"+OK") and time.monotonic() - started < TRICKLE_FOR:
            reply = wire.command("CAPA")
            if reply.startswith(b"+OK"):
                wire.multiline()
            select.select([wire.sock], [], [], INTERVAL)
        assert reply.startswith(b"-ERR Login timeout"), reply
        assert wire.read_until_eof() == b""


def test_after_login_activity_moves_the_idle_deadline_past_the_login_deadline(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess(limits=LimitsConfig(login_timeout=LOGIN_TIMEOUT, idle_timeout=0.6))
    server.builder().add_all([b"Subject: one\n\nfirst\n"])
    with tls_wire(server) as wire:
        wire.login("alice", server.password())
        started = time.monotonic()
        # Commands more often than the idle timer fires, well past the login deadline.
        while time.monotonic() - started < 3 * LOGIN_TIMEOUT:
            assert wire.command("NOOP").startswith(b"+OK")
            select.select([wire.sock], [], [], INTERVAL)
        assert wire.command("STAT").startswith(b"+OK 1 ")
        assert wire.line() == b"-ERR Disconnected for inactivity.\r\n"
        assert wire.read_until_eof() == b""
    assert wait_for_log(caplog, "reason=idle timeout user=alice")


# -- connections counted from the accept --------------------------------------------------------

PER_IP = 5
FLOOD = 20


def silent(address: tuple[str, int], count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(address, timeout=POLL_DEADLINE, source_address=(source, 0))
        socks.append(sock)
    return socks


def closed_by_server(socks: list[socket.socket], count: int) -> list[bytes]:
    """Wait until ``count`` of ``socks`` were closed by the server; return what each sent."""
    replies: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + POLL_DEADLINE
    while len(replies) < count:
        assert time.monotonic() < deadline, f"{len(replies)} closed of {count} expected"
        pending = [s for s in socks if s not in replies]
        readable, _, _ = select.select(pending, [], [], 0.1)
        for sock in readable:
            data = bytearray()
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(512):
                    data += chunk
            replies[sock] = bytes(data)
    return list(replies.values())


def still_open(socks: list[socket.socket]) -> int:
    readable, _, _ = select.select(socks, [], [], 0)
    return len(socks) - len(readable)


@contextlib.contextmanager
def closing(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture
def counted(mailslot_factory: ServerFactory) -> MailslotServer:
    return mailslot_factory(
        listeners=[Listener("implicit"), Listener("starttls", proxy_protocol=True)],
        # Long: a connection closed during the test was refused, not timed out.
        limits={"max_connections_per_ip": PER_IP, "login_timeout": 60.0},
    )


def test_silent_implicit_tls_connections_are_counted_before_their_handshake(
    counted: MailslotServer,
) -> None:
    with closing(silent(counted.implicit, FLOOD)) as flood:
        replies = closed_by_server(flood, FLOOD - PER_IP)
        assert replies == [b""] * (FLOOD - PER_IP)  # no TLS yet: a plain close
        assert still_open(flood) == PER_IP
        # Another address is served all the while.
        context = counted.tls_files.client_context()
        with Pop3Wire(
            *counted.implicit, tls_context=context, source_address=(OTHER_SOURCE, 0)
        ) as w:
            assert w.greeting.startswith(b"+OK")
            assert w.command("QUIT").startswith(b"+OK")
    counted.stop()
    assert counted.wait_for_log("peer=127.0.0.1 refused: too many connections from your")
    # Not one line per connection: the first, then a count.
    assert len(counted.wait_for_log("peer=127.0.0.1 refused")) == 2, counted.log()
    assert counted.wait_for_log(f"peer=127.0.0.1 refused {FLOOD - PER_IP - 1} more connections")


def test_silent_proxy_connections_are_counted_against_the_proxy_before_their_header(
    counted: MailslotServer,
) -> None:
    with closing(silent(counted.starttls, FLOOD)) as flood:
        replies = closed_by_server(flood, FLOOD - PER_IP)
        refusal = b"-ERR [SYS/TEMP] Too many connections from your address.\r\n"
        assert replies == [refusal] * (FLOOD - PER_IP)
        assert still_open(flood) == PER_IP
        # A client behind another proxy address is served, and counted as itself.
        with Pop3Wire(
            *counted.starttls, source_address=(OTHER_SOURCE, 0), read_greeting=False
        ) as w:
            w.send(b"PROXY TCP4 198.51.100.9 127.0.0.1 4000 110\r\n")
            assert w.line().startswith(b"+OK")
            assert w.command("QUIT").startswith(b"+OK")
    counted.stop()
    assert len(counted.wait_for_log("peer=127.0.0.1 refused")) == 2, counted.log()
    assert counted.wait_for_log(f"peer=127.0.0.1 refused {FLOOD - PER_IP - 1} more connections")


def test_a_header_naming_an_address_over_its_limit_is_refused(counted: MailslotServer) -> None:
    header = b"PROXY TCP4 198.51.100.10 127.0.0.1 4000 110\r\n"
    other = (OTHER_SOURCE, 0)
    held = []
    try:
        for _ in range(PER_IP + 1):
            wire = Pop3Wire(
                *counted.starttls, source_address=(OTHER_SOURCE, 0), read_greeting=False
            )
            held.append(wire)
            wire.send(header)
            wire.greeting = wire.line()
        assert [w.greeting[:4] for w in held] == [b"+OK "] * PER_IP + [b"-ERR"]
        assert held[-1].greeting == b"-ERR [SYS/TEMP] Too many connections from your address.\r\n"
        assert held[-1].read_until_eof() == b""
        # The proxy's own address got its slot back: the header moved the count.
        more = Pop3Wire(*counted.starttls, source_address=other, read_greeting=False)
        held.append(more)
        more.send(b"PROXY TCP4 198.51.100.11 127.0.0.1 4000 110\r\n")
        assert more.line().startswith(b"+OK")
    finally:
        for wire in held:
            wire.close()
    assert counted.wait_for_log("peer=198.51.100.10 refused: too many connections from your")


# -- out of descriptors -------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


_TICKS = float(os.sysconf("SC_CLK_TCK"))


def test_out_of_descriptors_is_logged_and_served_again_once_freed(
    mailslot_factory: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = mailslot_factory(
        listeners=[Listener("none")],
        allow_plaintext=True,
        limits={"max_connections_per_ip": 10_000, "login_timeout": 60.0},
    )
    assert server.process is not None
    pid = server.process.pid
    # Leave the running server 10 descriptors more than it holds now: its max_connections,
    # worked out from the limit it started with, no longer protects it (as when something
    # else takes descriptors), and accept() fails with EMFILE.
    in_use = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 10, in_use + 10))
    address = server.listener("none")
    flood = silent(address, 40)
    try:
        assert server.wait_for_log("cannot accept")
        cpu_before, wall_before = _cpu_seconds(pid), time.monotonic()
        # The flood waits in the queue while the server is out of descriptors.
        select.select([], [], [], 1.0)
        cpu, wall = _cpu_seconds(pid) - cpu_before, time.monotonic() - wall_before
        with capsys.disabled():
            print(f"\nout of descriptors: server CPU {cpu:.2f} s over {wall:.2f} s")
        served = sum(1 for s in flood if select.select([s], [], [], 0)[0])
        assert served < len(flood)
    finally:
        for sock in flood:
            sock.close()
    # Descriptors are free again: another address is served.
    deadline = time.monotonic() + POLL_DEADLINE
    while True:
        try:
            with Pop3Wire(*address, source_address=(OTHER_SOURCE, 0), timeout=5) as wire:
                assert wire.greeting.startswith(b"+OK")
                assert wire.command("QUIT").startswith(b"+OK")
                break
        except (OSError, EOFError):
            assert time.monotonic() < deadline
    lines = server.wait_for_log("cannot accept")
    assert len(lines) == 1, lines  # once per window, however many accepts failed
    assert "Too many open files" in lines[0]
