"""A deliberately literal POP3 client: exact bytes out, exact bytes in.

``poplib`` hides what the tests must see (line ends, what arrives after STLS, whether the
server sent a TLS close_notify), so hostile and framing tests use this instead.  TLS runs
over memory BIOs, which lets a test look at the raw bytes that arrive after ``STLS``.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field

# Not a timing threshold: a safety net so a broken server fails a test instead of hanging it.
IO_TIMEOUT = 30.0

TLS_RECORD_TYPES = frozenset({0x14, 0x15, 0x16, 0x17})


class ConnectionClosed(EOFError):
    """The server closed the connection where the test expected more bytes."""


@dataclass
class _Tls:
    obj: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    raw_received: bytearray = field(default_factory=bytearray)


class Pop3Wire:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls_context: ssl.SSLContext | None = None,
        server_hostname: str = "localhost",
        source_address: tuple[str, int] | None = None,
        timeout: float = IO_TIMEOUT,
        read_greeting: bool = True,
    ) -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=source_address
        )
        self._buffer = bytearray()
        self._tls: _Tls | None = None
        self.clean_tls_close: bool | None = None  # set when the server closes a TLS session
        self.greeting = b""
        if tls_context is not None:
            self.start_tls(tls_context, server_hostname=server_hostname)
        if read_greeting:
            self.greeting = self.line()

    # -- transport ---------------------------------------------------------------------------

    def _recv_raw(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def _flush_tls(self) -> None:
        assert self._tls is not None
        pending = self._tls.outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def _recv(self) -> bytes:
        """Next bytes from the server (decrypted under TLS); ``b""`` at end of stream."""
        if self._tls is None:
            return self._recv_raw()
        tls = self._tls
        while True:
            try:
                data = tls.obj.read(65536)
            except ssl.SSLWantReadError:
                self._flush_tls()
                chunk = self._recv_raw()
                if not chunk:
                    self.clean_tls_close = False
                    return b""
                tls.raw_received += chunk
                tls.incoming.write(chunk)
                continue
            except ssl.SSLZeroReturnError:
                self.clean_tls_close = True
                return b""
            if data:
                return data
            self.clean_tls_close = True
            return b""

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self._tls is None:
            self.sock.sendall(data)
            return
        self._tls.obj.write(data)
        self._flush_tls()

    def start_tls(
        self,
        context: ssl.SSLContext,
        *,
        server_hostname: str = "localhost",
        then: bytes = b"",
    ) -> bytes:
        """Handshake; return the raw bytes that came from the server during it.

        Bytes already buffered (read together with the STLS reply) are fed to TLS first, so
        plaintext the server sent after ``+OK`` shows up in the returned bytes.  ``then`` is
        sent through TLS in the same segment as the client's last handshake message.
        """
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
        tls = _Tls(obj, incoming, outgoing)
        if self._buffer:
            tls.raw_received += self._buffer
            incoming.write(bytes(self._buffer))
            self._buffer.clear()
        self._tls = tls
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_tls()
                chunk = self._recv_raw()
                if not chunk:
                    raise ConnectionClosed("closed during the handshake") from None
                tls.raw_received += chunk
                incoming.write(chunk)
        if then:
            obj.write(then)
        self._flush_tls()
        return bytes(tls.raw_received)

    @property
    def tls_version(self) -> str | None:
        return None if self._tls is None else self._tls.obj.version()

    # -- reading -----------------------------------------------------------------------------

    def line(self) -> bytes:
        """One line including its CRLF (or LF); raises ConnectionClosed at end of stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            chunk = self._recv()
            if not chunk:
                raise ConnectionClosed(f"connection closed; partial line {bytes(self._buffer)!r}")
            self._buffer += chunk

    def multiline(self) -> bytes:
        """Everything up to and including the ``.\\r\\n`` terminator line, raw."""
        out = bytearray()
        while True:
            line = self.line()
            out += line
            if line == b".\r\n":
                return bytes(out)

    def command(self, line: bytes | str) -> bytes:
        """Send one command line (CRLF added) and return the first reply line."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.line()

    def read_until_eof(self) -> bytes:
        """All remaining bytes until the server closes the connection."""
        out = bytearray(self._buffer)
        self._buffer.clear()
        while True:
            chunk = self._recv()
            if not chunk:
                return bytes(out)
            out += chunk

    def login(self, user: str, password: str) -> None:
        reply = self.command(f"USER {user}")
        assert reply.startswith(b"+OK"), reply
        reply = self.command(f"PASS {password}")
        assert reply.startswith(b"+OK"), reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Pop3Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
