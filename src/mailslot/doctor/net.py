"""Sockets and POP3 lines for the doctor: connect with a short timeout, read replies.

Replies are read as RFC 1939 section 3 describes them: a status line ``+OK``/``-ERR`` ended by
CRLF, and for multi-line replies (CAPA, RFC 2449 section 5) lines up to a lone ``.``, with
byte-stuffed lines unstuffed.  A line longer than :data:`MAX_LINE` is the server's error: RFC
2449 section 4 caps a response line at 512 octets, and we allow generous slack.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from dataclasses import dataclass

MAX_LINE = 4096
DEFAULT_PORT = 995  # pop3s, RFC 8314 section 7.3
DEFAULT_STLS_PORT = 110  # pop3, RFC 1939
DEFAULT_TIMEOUT = 5.0


class Pop3Error(Exception):
    """The server broke POP3 framing, or answered a command with something else than +OK."""


@dataclass
class MultiLine:
    """A multi-line reply: its lines, and whether it ended with the ``.`` line."""

    lines: list[str]
    terminated: bool
    bare_lf: bool = False


class Pop3Channel:
    """A blocking POP3 client conversation over a socket (plain or TLS)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self.bare_lf = False

    def read_line(self) -> str:
        """One line without its line ending; raises :class:`Pop3Error` on EOF or overflow."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                raw, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                else:
                    self.bare_lf = True
                return raw.decode("utf-8", errors="replace")
            if len(self._buffer) > MAX_LINE:
                raise Pop3Error(f"a line longer than {MAX_LINE} octets")
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Pop3Error("the server closed the connection")
            self._buffer += chunk

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def command(self, line: str) -> str:
        """Send a command and return its status line (``+OK ...`` or ``-ERR ...``)."""
        self.send(line)
        return self.read_line()

    def read_multiline(self, limit: int = 1000) -> MultiLine:
        """The lines of a multi-line reply after its status line, unstuffed (RFC 1939 s. 3)."""
        lines: list[str] = []
        while len(lines) < limit:
            line = self.read_line()
            if line == ".":
                return MultiLine(lines, True, self.bare_lf)
            lines.append(line[1:] if line.startswith(".") else line)
        return MultiLine(lines, False, self.bare_lf)

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet read as lines."""
        return self._buffer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``host:port`` (every resolved address is tried, in order)."""
    return socket.create_connection((host, port), timeout=timeout)


@dataclass
class Opened:
    """A POP3 conversation after the greeting (and after TLS, when asked for)."""

    channel: Pop3Channel
    greeting: str
    greeting_seconds: float


def open_session(
    host: str,
    port: int,
    timeout: float,
    *,
    context: ssl.SSLContext | None,
    stls: bool = False,
) -> Opened:
    """Connect, handshake and read the greeting; with ``stls``, upgrade with STLS first.

    ``context`` None means plaintext.  For implicit TLS (RFC 8314 section 3.3) the handshake
    comes before the greeting; for STLS (RFC 2595 section 4) after it, once the server said
    +OK to STLS.  Raises OSError (connection, TLS) or :class:`Pop3Error`.
    """
    sock = connect(host, port, timeout)
    try:
        if context is not None and not stls:
            sock = context.wrap_socket(sock, server_hostname=host)
        channel = Pop3Channel(sock)
        started = time.monotonic()
        greeting = channel.read_line()
        elapsed = time.monotonic() - started
        if not greeting.startswith("+OK"):
            raise Pop3Error(f"greeting is not +OK: {greeting[:80]!r}")
        if stls and context is not None:
            reply = channel.command("STLS")
            if not reply.startswith("+OK"):
                raise Pop3Error(f"STLS answered {reply[:80]!r}")
            if channel.pending:
                # RFC 2595 section 4 / the CVE-2011-0411 class: nothing may follow the +OK.
                raise Pop3Error("the server sent data after its +OK to STLS, before TLS")
            channel = Pop3Channel(context.wrap_socket(sock, server_hostname=host))
        return Opened(channel, greeting, elapsed)
    except BaseException:
        sock.close()
        raise
