"""A small POP3 server set up to be wrong, for ``mailslot doctor``'s tests.

Two listeners on 127.0.0.1 (port 0, the kernel's choice): implicit TLS and plaintext with
STLS.  The TLS side is the stdlib ``ssl`` server with whatever certificate file, key, version
floor and cipher string a test gives, so it can serve a self-signed, expired, misnamed or
leaf-only chain, or accept TLS 1.0.  The POP3 side answers the greeting, CAPA (with the
capabilities a test lists, before and after TLS), STLS, USER/PASS, STAT and QUIT.

Why not ``openssl s_server``: it serves one connection at a time with the POP3 side scripted
on its standard input, and the doctor opens some thirty connections per run; a threaded
``ssl`` server is deterministic and serves them all.  The TLS stack is the same OpenSSL.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CAPA_PLAIN: tuple[str, ...] = ("TOP", "UIDL", "RESP-CODES", "PIPELINING", "STLS")
DEFAULT_CAPA_TLS: tuple[str, ...] = ("TOP", "UIDL", "RESP-CODES", "PIPELINING", "USER")


@dataclass
class FaultyPop3:
    certificate: Path  # PEM: the chain as served (leaf first)
    private_key: Path
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ciphers: str | None = None
    capa_plain: Sequence[str] = DEFAULT_CAPA_PLAIN
    capa_tls: Sequence[str] = DEFAULT_CAPA_TLS
    password: str = "secret"
    messages: int = 2
    after_stls_ok: bytes = b""  # sent right after "+OK" to STLS, before the handshake
    _sockets: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.certificate), str(self.private_key))
        if self.ciphers is not None or self.minimum < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3's default security level refuses TLS 1.0/1.1 even when allowed.
            context.set_ciphers(self.ciphers or "ALL:@SECLEVEL=0")
        with warnings.catch_warnings():  # ssl deprecates TLSv1 and TLSv1_1: the point here
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = self.minimum
            context.maximum_version = self.maximum
        self.context = context
        self.implicit_port = self._listen(tls=True)
        self.stls_port = self._listen(tls=False)

    def _listen(self, *, tls: bool) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self._sockets.append(listener)
        thread = threading.Thread(target=self._accept, args=(listener, tls), daemon=True)
        thread.start()
        self._threads.append(thread)
        return int(listener.getsockname()[1])

    def _accept(self, listener: socket.socket, tls: bool) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(10)
            threading.Thread(target=self._serve, args=(conn, tls), daemon=True).start()

    def _serve(self, conn: socket.socket, tls: bool) -> None:
        sock: socket.socket = conn
        with contextlib.suppress(OSError, ssl.SSLError, UnicodeDecodeError):
            if tls:
                sock = self.context.wrap_socket(conn, server_side=True)
            self._dialogue(sock, tls)
        with contextlib.suppress(OSError):
            sock.close()

    def _dialogue(self, sock: socket.socket, secure: bool, *, greet: bool = True) -> None:
        reader = sock.makefile("rb")
        if greet:  # after STLS the session goes on without a second greeting (RFC 2595 s. 4)
            sock.sendall(b"+OK faulty POP3 ready\r\n")
        user: str | None = None
        authenticated = False
        while True:
            line = reader.readline(1024)
            if not line:
                return
            verb, _, argument = line.decode().strip().partition(" ")
            verb = verb.upper()
            if verb == "CAPA":
                lines = self.capa_tls if secure else self.capa_plain
                body = "".join(f"{cap}\r\n" for cap in ("CAPA", *lines))
                sock.sendall(f"+OK capabilities\r\n{body}.\r\n".encode())
            elif verb == "STLS" and not secure:
                sock.sendall(b"+OK begin TLS\r\n" + self.after_stls_ok)
                tls = self.context.wrap_socket(sock, server_side=True)
                self._dialogue(tls, True, greet=False)
                tls.close()
                return
            elif verb == "USER":
                user = argument
                sock.sendall(b"+OK\r\n")
            elif verb == "PASS" and user is not None:
                authenticated = argument == self.password
                sock.sendall(b"+OK logged in\r\n" if authenticated else b"-ERR [AUTH] no\r\n")
            elif verb == "STAT" and authenticated:
                sock.sendall(f"+OK {self.messages} {self.messages * 100}\r\n".encode())
            elif verb == "QUIT":
                sock.sendall(b"+OK bye\r\n")
                return
            else:
                sock.sendall(b"-ERR unknown command\r\n")

    def stop(self) -> None:
        self._stopping.set()
        for listener in self._sockets:
            # shutdown() wakes the thread blocked in accept(); close() alone does not.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FaultyPop3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
