"""The ``login`` benchmark's client: connect, (TLS), USER/PASS, QUIT on bare sockets and epoll.

Client and server share the machine's cores, so every microsecond the client spends per login
is taken from the server: with asyncio (a task, a future per reply, the loop's TLS transport)
the client needed nearly as much CPU per login as the server it measured. Here each connection
is a small state machine driven by one ``epoll`` loop per worker process, with TLS on an
``ssl.SSLObject`` over memory BIOs, so the client's share of the cores goes to the server.

It speaks what :mod:`benchmarks.pop3client` speaks for a login and checks as much: every reply
is one ``+OK`` line (RFC 1939 section 3), nothing may follow STLS's ``+OK`` before the handshake
(RFC 2595 section 4), the certificate is verified for ``localhost`` (RFC 7817), and a
TLS connection ends with ``close_notify`` both ways, as the asyncio transport ends it.
"""

from __future__ import annotations

import errno
import select
import socket
import ssl
import time
from collections.abc import Callable

from benchmarks.corpus import PASSWORD
from benchmarks.pop3client import SERVER_NAME, ReplyError, TlsMode

MAX_REPLY = 4096  # one status line; more is a runaway server, not a reply
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Login:
    """One connection's progress through a login; ``stage`` names the step it waits for."""

    __slots__ = (
        "buf",
        "fd",
        "greeting",
        "inbox",
        "latency",
        "outbox",
        "sock",
        "stage",
        "t0",
        "tls",
        "user",
    )

    def __init__(self, user: str, sock: socket.socket, t0: float) -> None:
        self.user = user
        self.sock = sock
        self.fd = sock.fileno()
        self.tls: ssl.SSLObject | None = None
        self.inbox = ssl.MemoryBIO()
        self.outbox = ssl.MemoryBIO()
        self.buf = b""
        self.stage = "connect"
        self.t0 = t0
        self.greeting = 0.0
        self.latency = 0.0


class LoginLoop:
    """Runs one login after another for each user until ``end``; every reply checked.

    ``on_login(greeting_latency, login_latency)`` is called per login completed through
    QUIT's ``+OK``, ``on_error(exc)`` per failed one, with a note naming the step. Either
    way the user starts its next login while there is time, ``max_ops`` allows and the
    errors are fewer than ``max_errors``; logins under way are always finished.
    """

    def __init__(
        self,
        port: int,
        tls: TlsMode,
        ctx: ssl.SSLContext,
        timeout: float,
        on_login: Callable[[float, float], None],
        on_error: Callable[[BaseException], None],
        host: str = "127.0.0.1",
    ) -> None:
        self.port = port
        self.mode = tls
        self.ctx = ctx
        self.timeout = timeout
        self.host = host
        self.ops = 0
        self.errors = 0
        self._on_login = on_login
        self._on_error = on_error
        self._ep = select.epoll()
        self._live: dict[int, _Login] = {}

    def run(self, users: list[str], end: float, max_ops: int, max_errors: int) -> None:
        self._end, self._max_ops, self._max_errors = end, max_ops, max_errors
        try:
            for user in users:
                self._start(user)
            while self._live:
                for fd, _ in self._ep.poll(min(1.0, self.timeout)):
                    login = self._live.get(fd)
                    if login is not None:
                        self._step(login)
                self._expire(time.perf_counter())
        finally:
            for login in list(self._live.values()):
                self._drop(login)
            self._ep.close()

    # -- connection life ------------------------------------------------------------------

    def _more(self) -> bool:
        return (
            time.perf_counter() < self._end
            and self.ops < self._max_ops
            and self.errors < self._max_errors
        )

    def _start(self, user: str) -> None:
        if not self._more():
            return
        t0 = time.perf_counter()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        if self.mode != "none":
            # The handshake's last flight and USER go out back to back: Nagle would hold
            # USER for the server's delayed ACK.  In plaintext each command follows a reply
            # that acknowledged the one before, so Nagle never waits.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        login = _Login(user, sock, t0)
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._fail(login, ConnectionRefusedError(code, errno.errorcode.get(code, "?")))
            return
        self._live[login.fd] = login
        if self.mode == "implicit":
            # The ClientHello can go once the connection is up: wait until it is writable.
            login.stage = "TLS connect"
            self._ep.register(login.fd, _OUT)
        else:
            # "connect" until the greeting's first bytes: a refused connection shows as such.
            self._ep.register(login.fd, _IN)

    def _drop(self, login: _Login) -> None:
        del self._live[login.fd]
        login.sock.close()  # which also takes it out of the epoll set

    def _fail(self, login: _Login, exc: BaseException) -> None:
        exc.add_note(f"during {login.stage}")
        self.errors += 1
        self._on_error(exc)
        if self._live.get(login.fd) is login:
            self._drop(login)
        self._start(login.user)

    def _expire(self, now: float) -> None:
        for login in [x for x in self._live.values() if now - x.t0 > self.timeout]:
            self._fail(login, TimeoutError(f"no reply in {self.timeout:g} s"))

    # -- one readiness event --------------------------------------------------------------

    def _step(self, login: _Login) -> None:
        try:
            if login.stage == "TLS connect":
                err = login.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise ConnectionRefusedError(err, errno.errorcode.get(err, "?"))
                self._ep.modify(login.fd, _IN)
                self._start_tls(login)
                return
            try:
                data = login.sock.recv(65536)
            except BlockingIOError:
                return
            if login.tls is None:
                if not data:
                    raise ReplyError("connection closed by server")
                if login.stage == "connect":
                    login.stage = "greeting"
                login.buf += data
                self._replies(login)
            else:
                self._tls_data(login, login.tls, data)
        except Exception as exc:  # any failure is counted, and voids the run
            self._fail(login, exc)

    def _tls_data(self, login: _Login, tls: ssl.SSLObject, data: bytes) -> None:
        if data:
            login.inbox.write(data)
        else:
            login.inbox.write_eof()
        if login.stage.endswith("handshake") and not self._handshake(login, tls):
            return
        if login.stage == "close":
            self._closing(login, tls, eof=not data)
            return
        closed = not data
        while True:
            try:
                chunk = tls.read(65536)
            except _WANT:
                break
            if not chunk:  # close_notify: fine right after QUIT's +OK, not before
                closed = True
                break
            login.buf += chunk
        self._flush(login)
        self._replies(login)
        if closed and self._live.get(login.fd) is login and login.stage != "close":
            raise ReplyError("connection closed by server")

    def _start_tls(self, login: _Login) -> None:
        login.tls = self.ctx.wrap_bio(login.inbox, login.outbox, server_hostname=SERVER_NAME)
        login.stage = "TLS handshake" if self.mode == "implicit" else "STLS handshake"
        self._handshake(login, login.tls)

    def _handshake(self, login: _Login, tls: ssl.SSLObject) -> bool:
        """Drive the handshake on; True once it is done (and the next step begun)."""
        try:
            tls.do_handshake()
        except _WANT:
            self._flush(login)
            return False
        self._flush(login)
        if self.mode == "implicit":
            login.stage = "greeting"
        else:
            login.stage = "USER"
            self._send(login, b"USER " + login.user.encode() + b"\r\n")
        return True

    def _closing(self, login: _Login, tls: ssl.SSLObject, eof: bool) -> None:
        """After QUIT's +OK: send close_notify; done at the server's close_notify or FIN."""
        try:
            tls.unwrap()
        except _WANT:
            if not eof:
                self._flush(login)
                return
        except ssl.SSLError:
            pass  # the server closed without close_notify after QUIT; the login is complete
        else:
            self._flush(login)
        self._drop(login)
        self._start(login.user)

    # -- replies --------------------------------------------------------------------------

    def _replies(self, login: _Login) -> None:
        buf = login.buf
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > MAX_REPLY:
                raise ReplyError("reply line longer than MAX_REPLY")
            return
        if not buf.startswith(b"+OK"):
            raise ReplyError(f"expected +OK, got {buf[:80]!r}")
        if end + 2 != len(buf):
            # One command is outstanding at a time, so one reply is all the server may send.
            raise ReplyError(f"bytes after the {login.stage} reply: {buf[end + 2 : end + 82]!r}")
        login.buf = b""
        stage = login.stage
        now = time.perf_counter()
        if stage == "greeting":
            login.greeting = now - login.t0
            if self.mode == "starttls":
                login.stage = "STLS"
                self._send(login, b"STLS\r\n")
            else:
                login.stage = "USER"
                self._send(login, b"USER " + login.user.encode() + b"\r\n")
        elif stage == "STLS":
            self._start_tls(login)
        elif stage == "USER":
            login.stage = "PASS"
            self._send(login, b"PASS " + PASSWORD.encode() + b"\r\n")
        elif stage == "PASS":
            login.latency = now - login.t0
            login.stage = "QUIT"
            self._send(login, b"QUIT\r\n")
        elif stage == "QUIT":
            self.ops += 1
            self._on_login(login.greeting, login.latency)
            if login.tls is None:
                self._drop(login)
                self._start(login.user)
                return
            login.stage = "close"
            self._closing(login, login.tls, eof=False)
        else:
            raise ReplyError(f"a reply during {stage}")

    def _send(self, login: _Login, line: bytes) -> None:
        if login.tls is None:
            data = line
        else:
            login.tls.write(line)
            data = login.outbox.read()
        # A few hundred bytes into an empty socket buffer: a short write would be a broken
        # connection, and is reported as one rather than buffered.
        if login.sock.send(data) != len(data):
            raise ReplyError("short write of a command")

    def _flush(self, login: _Login) -> None:
        data = login.outbox.read()
        if data and login.sock.send(data) != len(data):
            raise ReplyError("short write during the TLS handshake")
