"""``mailslot serve`` as a process: signals (SIGHUP reload, SIGTERM drain), pre-fork
workers sharing the maildrop lock, a busy port.  Real subprocesses, real sockets.
"""

from __future__ import annotations

import os
import poplib
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.server.procutil import (
    POLL_DEADLINE,
    children,
    holders,
    listening_inodes,
    poll,
    ready_workers,
    serving_pids,
)
from tests.server.tlsprobe import CertFiles, issue, serial_of_der
from tests.support.maildir import message_files
from tests.support.server import Listener, MailslotServer
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire

T = TypeVar("T")
MESSAGES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n", b"Subject: 3\n\nthird\n"]


@pytest.fixture
def certs(tmp_path: Path) -> CertFiles:
    """This test's own certificate files: SIGHUP tests replace them on disk."""
    return issue(tmp_path / "tls")


@pytest.fixture
def servers(tmp_path: Path, certs: CertFiles) -> Iterator[Any]:
    """``servers(start=True, **MailslotServer options)`` with this test's own TLS files."""
    made: list[MailslotServer] = []
    tls_files = TlsFiles(certs.ca_pem, certs.certificate, certs.private_key)

    def make(*, start: bool = True, **options: Any) -> MailslotServer:
        server = MailslotServer(tmp_path / f"server{len(made)}", tls_files, **options)
        made.append(server)
        return server.start() if start else server

    yield make
    for server in made:
        server.stop()


def refuses(host: str, port: int) -> bool:
    """Whether a connection to ``host:port`` is refused (nobody listens there)."""
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


HELD_LIMITS = {"max_connections_per_ip": 500}


def held_on_every_worker(
    workers: list[int],
    port: int,
    connect: Callable[[], T],
    sock_of: Callable[[T], socket.socket],
    at_least: int = 8,
) -> tuple[list[T], dict[int, int]]:
    """At least ``at_least`` connections, held open until every worker serves one of them;
    with ``{client port: worker pid}`` of each.

    The workers accept from one socket, so which takes a connection is whichever is woken
    first; on an idle server that is often the same one several times in a row, once in CI
    more than the 50 connections per address a worker allows by default.  Callers raise
    ``max_connections_per_ip`` above the 200 tried here (``HELD_LIMITS``).
    """
    held: list[T] = []
    try:
        while len(held) < 200:
            held.append(connect())
            if len(held) < at_least:
                continue  # no need to read /proc for the owners yet
            ports = [sock_of(c).getsockname()[1] for c in held]
            owners = serving_pids(workers, port, ports)
            if set(owners.values()) == set(workers):
                return held, owners
        raise AssertionError(f"{len(held)} connections did not reach every worker")
    except BaseException:
        for c in held:
            sock_of(c).close()
        raise


def test_the_workers_accept_from_one_listening_socket(servers: Any) -> None:
    """One socket per listener, bound by the parent before it forks: a new connection waits
    in one queue for whichever worker is free, rather than in the queue of the worker that
    a hash picked (SO_REUSEPORT).  The parent keeps it to start workers again, and closes it
    when it stops: then the port takes no connection."""
    server = servers(extra_sections={"server": {"workers": 2}})
    workers = ready_workers(server, 2)
    assert server.process is not None
    parent = server.process.pid
    for _host, port in (server.starttls, server.implicit):
        inodes = listening_inodes(port)
        assert len(inodes) == 1, inodes
        assert holders([parent, *workers], inodes[0]) == [parent, *workers]
    assert server.stop() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.starttls, timeout=5).close()


def resumes_on_every_worker(server: MailslotServer, workers: list[int]) -> None:
    """A TLS session that one of ``workers`` began resumes on each of them."""
    host, port = server.implicit
    context = server.tls_files.client_context()

    def connect(session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection((host, port), timeout=10)
        sock = context.wrap_socket(raw, server_hostname="localhost", session=session)
        # Reading the greeting also reads the TLS 1.3 tickets sent before it.
        assert sock.recv(512).startswith(b"+OK")
        return sock

    first = connect()
    session = first.session
    first.close()
    assert session is not None and session.has_ticket
    held, _ = held_on_every_worker(workers, port, lambda: connect(session), lambda s: s)
    try:
        assert [sock.session_reused for sock in held] == [True] * len(held)
    finally:
        for sock in held:
            sock.close()


def test_a_tls_session_resumes_on_every_worker(servers: Any) -> None:
    """The workers share one TLS context, built before the fork, and so its ticket keys: a
    session one worker began resumes on the other (RFC 8446 section 2.2)."""
    server = servers(extra_sections={"server": {"workers": 2}}, limits=HELD_LIMITS)
    resumes_on_every_worker(server, ready_workers(server, 2))


def implicit_wire(server: MailslotServer) -> Pop3Wire:
    host, port = server.implicit
    return Pop3Wire(host, port, tls_context=server.tls_files.client_context())


def stls_serial(server: MailslotServer) -> int:
    host, port = server.starttls
    client = poplib.POP3(host, port, timeout=30)
    try:
        client.stls(server.tls_files.client_context())
        assert isinstance(client.sock, ssl.SSLSocket)
        der = client.sock.getpeercert(binary_form=True)
        assert der is not None
        client.quit()
        return serial_of_der(der)
    finally:
        client.close()


def served_serial(server: MailslotServer) -> int:
    host, port = server.implicit
    context = server.tls_files.client_context()
    with (
        socket.create_connection((host, port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"QUIT\r\n")
        return serial_of_der(der)


def replace_certificate(target: CertFiles, new: CertFiles) -> None:
    os.replace(new.certificate, target.certificate)
    os.replace(new.private_key, target.private_key)


def test_sighup_reloads_the_certificate_and_keeps_sessions(
    servers: Any, certs: CertFiles, tmp_path: Path
) -> None:
    server = servers()
    server.builder("alice").add_all(MESSAGES)
    assert served_serial(server) == certs.serial
    with implicit_wire(server) as old:
        old.login("alice", server.password("alice"))
        new = issue(tmp_path / "new", certs.ca)
        replace_certificate(certs, new)
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        poll(lambda: served_serial(server) == new.serial, "the new certificate")
        assert stls_serial(server) == new.serial
        assert "TLS certificate reloaded" in server.log()
        # The session opened before the reload goes on over its old TLS state.
        assert old.command("STAT").startswith(b"+OK 3 ")
        assert old.command("RETR 1").startswith(b"+OK")
        assert old.multiline().endswith(b"first\r\n.\r\n")
        assert old.command("DELE 1").startswith(b"+OK")
        assert old.command("QUIT").startswith(b"+OK")
    assert len(message_files(server.maildir("alice"))) == 2
    assert server.running


def test_sighup_with_a_mismatched_key_keeps_the_old_certificate(
    servers: Any, certs: CertFiles, tmp_path: Path
) -> None:
    server = servers()
    new = issue(tmp_path / "new", certs.ca)
    os.replace(new.certificate, certs.certificate)  # the key stays the old one
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("TLS reload failed")
    assert served_serial(server) == certs.serial
    assert stls_serial(server) == certs.serial
    assert server.running


def test_sigterm_drains_a_transaction_then_exits_zero(servers: Any) -> None:
    server = servers(extra_sections={"server": {"shutdown_timeout": 30.0}})
    server.builder("alice").add_all(MESSAGES)
    host, port = server.implicit
    with implicit_wire(server) as wire:
        wire.login("alice", server.password("alice"))
        assert wire.command("DELE 2").startswith(b"+OK")
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)

        poll(lambda: refuses(host, port), "the listener to close")
        assert server.running  # still serving the open session
        assert wire.command("STAT").startswith(b"+OK 2 ")
        assert wire.command("RETR 1").startswith(b"+OK")
        assert wire.multiline().endswith(b"first\r\n.\r\n")
        assert wire.command("QUIT").startswith(b"+OK")
        assert wire.read_until_eof() == b""
    assert server.process.wait(POLL_DEADLINE) == 0
    remaining = message_files(server.maildir("alice"))
    assert sorted(remaining.values()) == sorted([MESSAGES[0], MESSAGES[2]])


def test_sigterm_cancels_a_session_past_the_deadline_and_deletes_nothing(
    servers: Any,
) -> None:
    server = servers(extra_sections={"server": {"shutdown_timeout": 0.3}})
    server.builder("alice").add_all(MESSAGES)
    with implicit_wire(server) as wire:
        wire.login("alice", server.password("alice"))
        assert wire.command("DELE 1").startswith(b"+OK")
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # The client sends nothing more; past the deadline the server closes the session.
        rest = wire.read_until_eof()
        assert time.monotonic() - started >= 0.3  # it waited for the session first
        assert not rest.startswith(b"+OK"), rest
    assert server.process.wait(POLL_DEADLINE) == 0
    assert len(message_files(server.maildir("alice"))) == 3
    # The worker's last lines, logged on its loop as it stopped, were written before it exited.
    log = server.log()
    assert 'disconnect: reason="server shutdown" user=alice' in log
    assert "INFO mailslot: shutting down" in log


def test_a_probe_of_the_tls_port_neither_lingers_nor_holds_shutdown(servers: Any) -> None:
    # When uvloop handed a probe's FIN to the protocol that holds the connection before the
    # handshake, that protocol closed the transport under start_tls(), and shutdown waited the
    # whole handshake timeout (10 s) for it.  The race is hit most often by the listener-closed
    # poll of test_sigterm_drains_a_transaction_then_exits_zero; this is the plain case.
    server = servers()  # handshake_timeout: 10 s, twice what either step below may take
    for _ in range(20):  # whether the FIN beats start_tls() is a race: run it many times
        socket.create_connection(server.implicit).close()
    assert len(server.wait_for_log("TLS handshake failed", 20, deadline=5.0)) == 20
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(5.0) == 0


def test_two_workers_both_serve_and_share_the_maildrop_lock(servers: Any) -> None:
    # Sessions per user above 1, so that the flock, not the node's session count (which
    # would refuse first, tests/server/test_limits_shared.py), is what is tested here.
    limits = {**HELD_LIMITS, "max_sessions_per_user": 10}
    server = servers(extra_sections={"server": {"workers": 2}}, limits=limits)
    server.builder("alice").add_all(MESSAGES)
    workers = ready_workers(server, 2)
    host, port = server.starttls
    wires, owners = held_on_every_worker(
        workers, port, lambda: Pop3Wire(host, port), lambda w: w.sock, at_least=24
    )
    try:
        for wire in wires:
            assert wire.greeting.startswith(b"+OK")
        assert len(owners) == len(wires)

        # alice logs in on one worker; every attempt on the other must meet the flock.
        context = server.tls_files.client_context()
        holder = wires[0]
        assert holder.command("STLS").startswith(b"+OK")
        holder.start_tls(context)
        holder.login("alice", server.password("alice"))
        holder_pid = owners[holder.sock.getsockname()[1]]
        others = [w for w in wires[1:] if owners[w.sock.getsockname()[1]] != holder_pid]
        assert others
        for wire in others[:3]:
            assert wire.command("STLS").startswith(b"+OK")
            wire.start_tls(context)
            assert wire.command("USER alice").startswith(b"+OK")
            reply = wire.command(f"PASS {server.password('alice')}")
            assert reply.startswith(b"-ERR [IN-USE]"), reply
        # A worker writes its log line after its reply: wait for it.
        server.wait_for_log("maildrop in use: user=alice")
        assert holder.command("QUIT").startswith(b"+OK")
    finally:
        for wire in wires:
            wire.close()
    assert server.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)


def test_sighup_starts_new_workers_that_share_their_ticket_keys(
    servers: Any, certs: CertFiles, tmp_path: Path
) -> None:
    """The parent loads the new certificate and forks a new generation with it; the old
    workers, with no session open, exit at once.  The new ones share one context, so a
    session resumes on each of them, as before the reload."""
    server = servers(extra_sections={"server": {"workers": 2}}, limits=HELD_LIMITS)
    assert server.process is not None
    parent = server.process.pid
    old = ready_workers(server, 2)
    new = issue(tmp_path / "new", certs.ca)
    replace_certificate(certs, new)
    server.process.send_signal(signal.SIGHUP)
    poll(lambda: not set(old) & set(children(parent)), "the old workers to exit")
    workers = ready_workers(server, 2)
    assert not set(workers) & set(old)
    log = server.log()
    assert log.count("TLS certificate reloaded") == 1
    assert log.count("retired") == 2
    assert {served_serial(server) for _ in range(16)} == {new.serial}
    resumes_on_every_worker(server, workers)


def test_a_retiring_worker_serves_its_session_to_the_end(
    servers: Any, certs: CertFiles, tmp_path: Path
) -> None:
    server = servers(extra_sections={"server": {"workers": 2}})
    server.builder("alice").add_all(MESSAGES)
    assert server.process is not None
    parent = server.process.pid
    old = ready_workers(server, 2)
    with implicit_wire(server) as wire:
        wire.login("alice", server.password("alice"))
        (holder,) = serving_pids(old, server.implicit[1], [wire.sock.getsockname()[1]]).values()
        replace_certificate(certs, issue(tmp_path / "new", certs.ca))
        server.process.send_signal(signal.SIGHUP)
        # The other old worker exits; two new ones start; the holder stays.
        poll(lambda: len(children(parent)) == 3, "two new workers beside the holder")
        assert holder in children(parent)
        assert wire.command("STAT").startswith(b"+OK 3 ")
        assert wire.command("RETR 2").startswith(b"+OK")
        assert wire.multiline().endswith(b"second\r\n.\r\n")
        assert wire.command("DELE 2").startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
        assert wire.read_until_eof() == b""
    poll(lambda: holder not in children(parent), "the holder to exit after its session")
    assert len(children(parent)) == 2
    remaining = message_files(server.maildir("alice"))
    assert sorted(remaining.values()) == sorted([MESSAGES[0], MESSAGES[2]])
    assert server.stop() == 0


def test_sigterm_reaches_a_retiring_worker_too(
    servers: Any, certs: CertFiles, tmp_path: Path
) -> None:
    """A session on a retiring worker is ended at the shutdown deadline like any other, and
    nothing it marked is deleted."""
    server = servers(extra_sections={"server": {"workers": 2, "shutdown_timeout": 0.3}})
    server.builder("alice").add_all(MESSAGES)
    assert server.process is not None
    parent = server.process.pid
    ready_workers(server, 2)
    with implicit_wire(server) as wire:
        wire.login("alice", server.password("alice"))
        assert wire.command("DELE 1").startswith(b"+OK")
        replace_certificate(certs, issue(tmp_path / "new", certs.ca))
        server.process.send_signal(signal.SIGHUP)
        poll(lambda: len(children(parent)) == 3, "two new workers beside the holder")
        server.process.send_signal(signal.SIGTERM)
        assert not wire.read_until_eof().startswith(b"+OK")
    assert server.process.wait(POLL_DEADLINE) == 0
    assert len(message_files(server.maildir("alice"))) == 3
    assert 'disconnect: reason="server shutdown" user=alice' in server.log()


def test_sigusr2_stops_a_lone_worker_once_its_sessions_end(servers: Any) -> None:
    """What a retiring worker does, asked of a server with one: no new connections, the
    open session served to its end, then exit 0."""
    server = servers(extra_sections={"server": {"shutdown_timeout": 0.2}})
    server.builder("alice").add_all(MESSAGES)
    host, port = server.implicit
    with implicit_wire(server) as wire:
        wire.login("alice", server.password("alice"))
        assert server.process is not None
        server.process.send_signal(signal.SIGUSR2)

        poll(lambda: refuses(host, port), "the listener to close")
        time.sleep(0.6)  # past shutdown_timeout: SIGTERM would have ended the session
        assert server.running
        assert wire.command("DELE 3").startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
        assert wire.read_until_eof() == b""
    assert server.process.wait(POLL_DEADLINE) == 0
    assert len(message_files(server.maildir("alice"))) == 2
    assert "worker 0 retired" in server.log()


def test_sighup_with_a_bad_key_keeps_the_workers(servers: Any, certs: CertFiles) -> None:
    server = servers(extra_sections={"server": {"workers": 2}})
    assert server.process is not None
    workers = ready_workers(server, 2)
    Path(certs.private_key).write_text("not a key\n")
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_log("TLS reload failed")
    assert children(server.process.pid) == workers
    assert {served_serial(server) for _ in range(8)} == {certs.serial}


def test_lmtp_is_served_by_the_new_workers_after_sighup(
    servers: Any, certs: CertFiles, tmp_path: Path
) -> None:
    """The parent binds the LMTP socket too, so the new first worker serves it at once: the
    old one, retiring, has stopped accepting on it."""
    server = servers(
        listeners=(Listener("starttls"), Listener("implicit"), Listener("none", protocol="lmtp")),
        extra_sections={"server": {"workers": 2}},
    )
    assert server.process is not None
    parent = server.process.pid
    old = ready_workers(server, 2)
    _, port = server.listener("none", protocol="lmtp")
    server.builder("alice")

    def deliver(subject: str) -> None:
        with smtplib.LMTP("127.0.0.1", port, timeout=10) as lmtp:
            lmtp.sendmail("s@example.org", ["alice"], f"Subject: {subject}\r\n\r\nbody\r\n")

    deliver("before")
    replace_certificate(certs, issue(tmp_path / "new", certs.ca))
    server.process.send_signal(signal.SIGHUP)
    poll(lambda: not set(old) & set(children(parent)), "the old workers to exit")
    deliver("after")
    messages = message_files(server.maildir("alice")).values()
    subjects = sorted(line for m in messages for line in m.splitlines() if b"Subject:" in line)
    assert subjects == [b"Subject: after", b"Subject: before"]


def test_a_worker_that_dies_is_replaced(servers: Any) -> None:
    server = servers(extra_sections={"server": {"workers": 2}})
    server.builder("alice").add_all(MESSAGES)
    assert server.process is not None
    parent = server.process.pid
    first, second = ready_workers(server, 2)
    os.kill(second, signal.SIGKILL)
    poll(lambda: second not in children(parent) and len(children(parent)) == 2, "a new worker")
    workers = ready_workers(server, 2)  # both greet, the new one included
    assert first in workers and second not in workers
    assert f"pid={second} was killed by SIGKILL; starting another" in server.log()
    assert served_serial(server)  # and the server serves on
    assert server.stop() == 0


def test_per_address_limit_is_per_worker(servers: Any) -> None:
    server = servers(
        extra_sections={"server": {"workers": 2}}, limits={"max_connections_per_ip": 2}
    )
    assert server.process is not None
    pid = server.process.pid
    poll(lambda: len(children(pid)) == 2, "two worker processes")
    host, port = server.starttls
    wires = [Pop3Wire(host, port) for _ in range(20)]
    try:
        greeted = [w for w in wires if w.greeting.startswith(b"+OK")]
        refused = [w for w in wires if w.greeting.startswith(b"-ERR [SYS/TEMP]")]
        assert len(greeted) + len(refused) == len(wires)
        # Documented: each worker keeps its own counters, so N workers admit at most N times
        # the limit (and at least the limit itself).
        assert 2 <= len(greeted) <= 4
    finally:
        for wire in wires:
            wire.close()


def _serve_until_it_exits(server: MailslotServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailslot", "serve", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_busy_port_makes_serve_exit_non_zero_with_a_clear_line(
    servers: Any, workers: int
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        server = servers(
            start=False,
            listeners=[Listener("implicit", "127.0.0.1", port)],
            extra_sections={"server": {"workers": workers}},
        )
        result = _serve_until_it_exits(server)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert lines, result.stderr
    assert all(str(port) in line and "in use" in line.lower() for line in lines), lines
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unusable_private_key_makes_serve_exit_with_a_clear_line(
    servers: Any, certs: CertFiles, workers: int
) -> None:
    # Checked before anything starts, as check-config checks it: 78 (EX_CONFIG), like any
    # configuration problem, with a line naming the key and the file.
    server = servers(start=False, extra_sections={"server": {"workers": workers}})
    Path(certs.private_key).write_text("not a key\n")
    result = _serve_until_it_exits(server)
    assert result.returncode == 78, result.stderr
    lines = [line for line in result.stderr.splitlines() if "tls.private_key" in line]
    assert len(lines) == 1, result.stderr
    assert f"{server.config_path}:" in lines[0] and str(certs.private_key) in lines[0]
    assert "Traceback" not in result.stderr


def test_a_session_open_at_the_deadline_is_told_sys_temp_before_the_close(
    servers: Any,
) -> None:
    server = servers(extra_sections={"server": {"shutdown_timeout": 0.3}})
    server.builder("alice").add_all(MESSAGES)
    with implicit_wire(server) as wire:
        wire.login("alice", server.password("alice"))
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        rest = wire.read_until_eof()
    assert rest.startswith(b"-ERR [SYS/TEMP] Server shutting down"), rest
    assert server.process.wait(POLL_DEADLINE) == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_sigterm_ends_the_open_sessions_at_once(servers: Any, workers: int) -> None:
    # A deadline far beyond the test's own: only the second signal can end the session.
    server = servers(extra_sections={"server": {"shutdown_timeout": 3600, "workers": workers}})
    if workers > 1:
        ready_workers(server, workers)
    server.builder("alice").add_all(MESSAGES)
    with implicit_wire(server) as wire:
        wire.login("alice", server.password("alice"))
        assert wire.command("DELE 1").startswith(b"+OK")
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        # Every worker, not just one: the worker holding the session must have taken the
        # first signal, or it would see the two as one (pending signals merge).
        server.wait_for_log("shutting down", workers)
        server.process.send_signal(signal.SIGTERM)
        rest = wire.read_until_eof()
    assert rest.startswith(b"-ERR [SYS/TEMP]"), rest
    assert server.process.wait(POLL_DEADLINE) == 0
    assert "second stop signal: ending the open sessions now" in server.log()
    assert len(message_files(server.maildir("alice"))) == 3  # no QUIT: nothing deleted


def test_start_up_lines_are_said_once_per_server_not_per_worker(servers: Any) -> None:
    server = servers(extra_sections={"server": {"workers": 2}})
    ready_workers(server, 2)
    log = server.log()
    for listener in server.listeners:
        if listener.protocol == "pop3":
            assert log.count(f"listening: pop3 {listener.address}:{listener.port} ") == 1, log
