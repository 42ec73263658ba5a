"""The challenge answers mailslot serves itself while an order is being validated.

- **HTTP-01** (RFC 8555 section 8.3): a tiny HTTP/1.1 server (asyncio) that answers
  ``GET /.well-known/acme-challenge/TOKEN`` with the key authorization and everything else
  with 404; one request per connection, headers capped at 8 KiB and 10 seconds.
- **TLS-ALPN-01** (RFC 8737): a TLS listener that offers only the ``acme-tls/1`` protocol
  (section 6) and, for a name being validated, presents a self-signed certificate for that
  name alone with the critical acmeIdentifier extension holding the SHA-256 digest of the key
  authorization (section 3); it chooses that certificate by the name the CA sends (SNI).

Both answer on their own ports ([acme] http_port, tls_alpn_port), not on the POP3 listeners:
the CA validates on ports 80 and 443.  TLS-ALPN-01 is not answered on port 995 because
Python's :mod:`ssl` chooses the certificate (the SNI callback) before it sees which ALPN
protocols the client offers, so a POP3 client that sends the name being validated would be
given the challenge certificate for the seconds a validation lasts.

:class:`ChallengeBoard` is what the issuer (a thread) publishes and the responders (the event
loop) read: plain dicts, whose single assignments and lookups are atomic in CPython.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from mailslot.tls.acme.state import private_key_pem

logger = logging.getLogger("mailslot.acme")

CHALLENGE_PATH = "/.well-known/acme-challenge/"
ACME_TLS_1 = "acme-tls/1"  # RFC 8737 section 6
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737 section 6.1
_MAX_HEADER = 8192
_READ_TIMEOUT = 10.0


class ChallengeBoard:
    """The answers to publish: HTTP-01 key authorizations by token, TLS-ALPN-01 contexts by
    name."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch  # where a challenge certificate is written for a moment
        self.http: dict[str, bytes] = {}
        self.alpn: dict[str, ssl.SSLContext] = {}

    def add_alpn(self, name: str, key_authorization: str) -> None:
        self.alpn[name.lower()] = alpn_context(name, key_authorization, self.scratch)


def alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """RFC 8737 section 3's certificate for ``name`` (PEM) and its fresh key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashes.Hash(hashes.SHA256())
    digest.update(key_authorization.encode("ascii"))
    # extnValue is the DER encoding of the OCTET STRING Authorization (RFC 8737 section 3).
    authorization = b"\x04\x20" + digest.finalize()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, authorization), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


def alpn_context(name: str, key_authorization: str, scratch: Path) -> ssl.SSLContext:
    """A server context that offers only ``acme-tls/1`` with ``name``'s challenge certificate."""
    chain, key = alpn_certificate(name, key_authorization)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 section 4
    context.set_alpn_protocols([ACME_TLS_1])
    # ssl loads a certificate only from a file: one that lives for this call, 0600.
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=scratch, prefix=".alpn-", suffix=".pem")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key + chain)
        context.load_cert_chain(temporary)
    finally:
        os.unlink(temporary)
    return context


def _host(address: str) -> str | None:
    """``"*"``: every address, IPv4 and IPv6 (asyncio binds one socket per family)."""
    return None if address == "*" else address


class Http01Responder:
    """The HTTP-01 server; :meth:`start` binds, :meth:`close` stops."""

    def __init__(self, board: ChallengeBoard, address: str, port: int) -> None:
        self.board = board
        self.address = address
        self.port = port
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, _host(self.address), self.port, limit=_MAX_HEADER, reuse_address=True
        )
        logger.info("acme: HTTP-01 responder on %s port %d", self.address, self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            status, body = self.answer(head.split(b"\r\n", 1)[0])
            reason = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed"}[status]
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (status, reason, len(body), body)
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that sent no complete request within the limits gets nothing
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def answer(self, request_line: bytes) -> tuple[int, bytes]:
        """The status and body for one request line (``GET /path HTTP/1.1``)."""
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 404, b""
        method, target = parts[0], parts[1].decode("ascii", "replace")
        if method not in (b"GET", b"HEAD"):
            return 405, b""
        if not target.startswith(CHALLENGE_PATH):
            return 404, b""
        key_authorization = self.board.http.get(target[len(CHALLENGE_PATH) :])
        if key_authorization is None:
            return 404, b""
        logger.info("acme: HTTP-01 challenge answered for token %.12s...", target[28:])
        return 200, key_authorization if method == b"GET" else b""


class TlsAlpnResponder:
    """The TLS-ALPN-01 listener; :meth:`start` binds, :meth:`close` stops."""

    def __init__(self, board: ChallengeBoard, address: str, port: int) -> None:
        self.board = board
        self.address = address
        self.port = port
        self.server: asyncio.Server | None = None
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.set_alpn_protocols([ACME_TLS_1])
        self.context.sni_callback = self._select

    def _select(self, ssl_object: ssl.SSLObject, server_name: str | None, _: object) -> int | None:
        context = self.board.alpn.get((server_name or "").lower())
        if context is None:
            # No challenge for this name: refuse the handshake (unrecognized_name).
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        ssl_object.context = context
        return None

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve,
            _host(self.address),
            self.port,
            ssl=self.context,
            ssl_handshake_timeout=_READ_TIMEOUT,
            reuse_address=True,
        )
        logger.info("acme: TLS-ALPN-01 responder on %s port %d", self.address, self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The handshake was the answer (RFC 8737 section 3): nothing more is said.
        logger.info("acme: TLS-ALPN-01 challenge answered")
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
