"""The login benchmark's bare-socket client (benchmarks.logins) against real and broken servers.

A benchmark is only a result if its client counts every wrong reply: these tests run it
against a real mailslot in each TLS mode, and against scripted servers that misbehave at
each step, and check that each misstep is counted as an error naming the step.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest
from benchmarks.corpus import PASSWORD
from benchmarks.loadgen import run_coroutine_job
from benchmarks.logins import LoginLoop
from benchmarks.scenarios import Job, probe
from tests.support.passwd import PasswdUser
from tests.support.server import Listener, MailslotServer, ServerFactory
from tests.support.tls import TlsFiles

USERS = [f"load{i}" for i in range(4)]
Mode = Literal["none", "starttls", "implicit"]


@pytest.fixture
def bench_server(mailslot_factory: ServerFactory) -> MailslotServer:
    """Users with the benchmark corpus's password, and a listener for each mode."""
    return mailslot_factory(
        listeners=(Listener("starttls"), Listener("implicit")),
        extra_users=[PasswdUser(name, PASSWORD) for name in USERS],
        allow_plaintext=True,
        failure_delay=0.0,
        failure_delay_max=0.0,
    )


class Logins:
    """What a LoginLoop reported: completed logins and errors."""

    def __init__(self) -> None:
        self.done: list[tuple[float, float]] = []
        self.errors: list[BaseException] = []

    def run(
        self,
        port: int,
        mode: Mode,
        ctx: ssl.SSLContext,
        *,
        users: list[str],
        max_ops: int = 1_000_000,
        max_errors: int = 1,
        seconds: float = 30.0,
        timeout: float = 10.0,
    ) -> LoginLoop:
        loop = LoginLoop(port, mode, ctx, timeout, self._done, self.errors.append)
        loop.run(users, time.perf_counter() + seconds, max_ops, max_errors)
        return loop

    def _done(self, greeting: float, latency: float) -> None:
        self.done.append((greeting, latency))

    def notes(self) -> list[str]:
        return [" ".join(getattr(exc, "__notes__", ())) for exc in self.errors]


def port_for(server: MailslotServer, mode: Mode) -> int:
    return server.implicit[1] if mode == "implicit" else server.starttls[1]


def login_job(server: MailslotServer, mode: Mode, **settings: Any) -> Job:
    ca_path = str(server.tls_files.ca_pem)
    return Job("login", port_for(server, mode), mode, ca_path, USERS, {}, **settings)


@pytest.mark.parametrize("mode", ["none", "starttls", "implicit"])
def test_logins_against_mailslot_are_counted_and_really_happen(
    bench_server: MailslotServer, mode: Mode
) -> None:
    logins = Logins()
    ctx = bench_server.tls_files.client_context()
    loop = logins.run(port_for(bench_server, mode), mode, ctx, users=USERS, max_ops=40)
    assert logins.errors == []
    # max_ops stops new logins; those under way (one per user at most) are finished.
    assert 40 <= loop.ops < 40 + len(USERS)
    assert len(logins.done) == loop.ops
    assert all(0 < greeting < latency for greeting, latency in logins.done)
    # The server saw each of them through QUIT, with TLS where the mode asks for it.
    bench_server.wait_for_log("disconnect: reason=quit", loop.ops, deadline=10.0)
    log = bench_server.log()
    logged = [line for line in log.splitlines() if " login: user=load" in line]
    assert len(logged) == loop.ops
    want_tls = "tls=no" if mode == "none" else "tls=TLSv1.3"
    assert all(want_tls in line for line in logged), logged[:3]


def test_login_job_through_the_load_generator(bench_server: MailslotServer) -> None:
    """run_job dispatches "login" to the bare-socket client and fills the Result."""
    res = run_coroutine_job(login_job(bench_server, "implicit", duration=30.0, max_ops=12), None)
    assert res.errors == 0, res.describe_errors()
    assert 12 <= res.ops < 12 + len(USERS)
    assert len(res.latencies) == len(res.greetings) == res.ops
    assert res.cpu > 0 and res.wall > 0


def test_probe_logs_in_one_user_count_times(bench_server: MailslotServer) -> None:
    """The idle benchmark's fresh client: sequential logins of one user, latencies kept."""
    res = probe(login_job(bench_server, "starttls"), USERS[1], count=7, duration=30.0)
    assert res.errors == 0, res.describe_errors()
    assert res.ops == 7 and len(res.greetings) == len(res.latencies) == 7
    logged = [line for line in bench_server.log().splitlines() if " login: user=" in line]
    assert len(logged) == 7 and all("user=load1 " in line for line in logged)


def test_an_untrusted_certificate_is_an_error(bench_server: MailslotServer) -> None:
    logins = Logins()
    untrusting = ssl.create_default_context()  # the system's CAs, not the test root
    logins.run(bench_server.implicit[1], "implicit", untrusting, users=USERS[:1])
    assert len(logins.errors) == 1 and logins.done == []
    assert isinstance(logins.errors[0], ssl.SSLCertVerificationError)
    assert logins.notes() == ["during TLS handshake"]


def test_a_refused_connection_is_an_error(bench_server: MailslotServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: the connection is refused
        logins = Logins()
        logins.run(port, "none", bench_server.tls_files.client_context(), users=USERS[:1])
    assert len(logins.errors) == 1 and logins.done == []
    assert isinstance(logins.errors[0], ConnectionRefusedError)
    assert logins.notes() == ["during connect"]


# -- scripted servers that go wrong at one step -----------------------------------------------

Script = Callable[[socket.socket], object]


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], int]]:
    """``scripted(script)`` -> port of a server running ``script`` on every connection."""
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []
    stop = threading.Event()

    def serve(script: Script) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.05)  # accept() is not woken by close(): poll for `stop`
        listeners.append(listener)

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(10)
                    with contextlib.suppress(OSError):
                        script(conn)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        threads.append(thread)
        return int(listener.getsockname()[1])

    yield serve
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    for listener in listeners:
        listener.close()


def reply_to(*replies: bytes) -> Script:
    """Greet with the first reply, then send one reply per command line received."""

    def script(conn: socket.socket) -> None:
        conn.sendall(replies[0])
        for reply in replies[1:]:
            if not conn.recv(1024):
                return
            conn.sendall(reply)
        conn.recv(1024)

    return script


def half_a_line(conn: socket.socket) -> None:
    conn.sendall(b"+OK no line end")  # and close


@pytest.mark.parametrize(
    ("script", "error", "stage"),
    [
        (reply_to(b"-ERR go away\r\n"), "expected +OK", "greeting"),
        (reply_to(b"+OK\r\n", b"+OK\r\n", b"-ERR [AUTH] no\r\n"), "expected +OK", "PASS"),
        (reply_to(b"+OK\r\n", b"+OK\r\n+OK\r\n"), "bytes after the USER reply", "USER"),
        (reply_to(b"+OK\r\n", b"+OK\r\n", b"+OK\r\n", b"+OK bye\r\nX"), "bytes after", "QUIT"),
        (reply_to(b"+OK\r\n"), "connection closed by server", "USER"),
        (half_a_line, "connection closed by server", "greeting"),
    ],
)
def test_a_wrong_reply_is_an_error_naming_the_step(
    scripted: Callable[[Script], int], script: Script, error: str, stage: str
) -> None:
    port = scripted(script)
    logins = Logins()
    logins.run(port, "none", ssl.create_default_context(), users=USERS[:1])
    assert logins.done == [] and len(logins.errors) == 1
    assert error in str(logins.errors[0])
    assert logins.notes() == [f"during {stage}"]


@pytest.mark.parametrize("server_closes", ["close_notify", "FIN"])
def test_a_tls_login_ends_with_close_notify_both_ways(
    scripted: Callable[[Script], int], tls_files: TlsFiles, server_closes: str
) -> None:
    """After QUIT's +OK the client sends close_notify, and is done at the server's or at FIN."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_files.certificate, tls_files.private_key)
    seen: list[str] = []

    def script(conn: socket.socket) -> None:
        # A FIN without close_notify raises instead of reading as b"".
        with server_ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as tls:
            tls.sendall(b"+OK ready\r\n")
            for reply in (b"+OK\r\n", b"+OK\r\n", b"+OK bye\r\n"):
                seen.append(tls.recv(1024).decode())
                tls.sendall(reply)
            if server_closes == "FIN":
                seen.append(repr(tls.recv(1024)))  # b"": the client's close_notify
                return  # and close without ours
            tls.unwrap()  # sends ours, returns once the client's arrived
            seen.append("close_notify")

    port = scripted(script)
    logins = Logins()
    logins.run(port, "implicit", tls_files.client_context(), users=["u"], max_ops=1)
    assert logins.errors == [] and len(logins.done) == 1
    deadline = time.monotonic() + 10
    while len(seen) < 4:
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)
    closing = "close_notify" if server_closes == "close_notify" else "b''"
    assert seen == ["USER u\r\n", f"PASS {PASSWORD}\r\n", "QUIT\r\n", closing]


def test_bytes_after_the_stls_reply_are_an_error(scripted: Callable[[Script], int]) -> None:
    # RFC 2595 section 4: nothing may follow STLS's +OK before the TLS handshake.
    port = scripted(reply_to(b"+OK\r\n", b"+OK begin TLS\r\n\x16\x03\x03"))
    logins = Logins()
    logins.run(port, "starttls", ssl.create_default_context(), users=USERS[:1])
    assert len(logins.errors) == 1
    assert "bytes after the STLS reply" in str(logins.errors[0])


def test_a_silent_server_times_out(scripted: Callable[[Script], int]) -> None:
    port = scripted(lambda conn: conn.recv(1024))  # accepts, never greets
    logins = Logins()
    logins.run(port, "none", ssl.create_default_context(), users=USERS[:1], timeout=0.3)
    assert len(logins.errors) == 1 and isinstance(logins.errors[0], TimeoutError)
    assert logins.notes() == ["during connect"]


def test_errors_stop_new_logins_at_max_errors(scripted: Callable[[Script], int]) -> None:
    port = scripted(reply_to(b"-ERR busy\r\n"))
    logins = Logins()
    loop = logins.run(port, "none", ssl.create_default_context(), users=USERS[:2], max_errors=5)
    # Each user retries after a failure until five are counted; the other's last one ends too.
    assert 5 <= loop.errors <= 6 and len(logins.errors) == loop.errors
    assert loop.ops == 0
