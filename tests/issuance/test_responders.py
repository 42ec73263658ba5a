"""The challenge responders over real sockets: HTTP-01 (RFC 8555 section 8.3) answers only
the published token's path; TLS-ALPN-01 (RFC 8737) negotiates ``acme-tls/1`` and presents a
certificate for the name with the critical acmeIdentifier extension holding SHA-256 of the
key authorization, and refuses names it has no challenge for."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from tests.support.server import free_port

from mailslot.tls.acme.responders import (
    ACME_IDENTIFIER,
    ChallengeBoard,
    Http01Responder,
    TlsAlpnResponder,
)


async def http_get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await reader.read()
    writer.close()
    return data


def test_http01_answers_the_token_and_nothing_else(tmp_path: Path) -> None:
    board = ChallengeBoard(tmp_path)
    board.http["tok-EN_1"] = b"tok-EN_1.thumbprint"
    responder = Http01Responder(board, "127.0.0.1", free_port())

    async def scenario() -> list[bytes]:
        await responder.start()
        try:
            return [
                await http_get(responder.port, request)
                for request in (
                    b"GET /.well-known/acme-challenge/tok-EN_1 HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET /.well-known/acme-challenge/other HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET /etc/passwd HTTP/1.1\r\n\r\n",
                    b"POST /.well-known/acme-challenge/tok-EN_1 HTTP/1.1\r\n\r\n",
                    b"GET /.well-known/acme-challenge/tok-EN_1\r\n\r\n",  # HTTP/0.9-style
                )
            ]
        finally:
            await responder.close()

    ok, unknown, elsewhere, post, bad = asyncio.run(scenario())
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    assert ok.endswith(b"\r\n\r\ntok-EN_1.thumbprint")
    assert unknown.startswith(b"HTTP/1.1 404 ")
    assert elsewhere.startswith(b"HTTP/1.1 404 ")
    assert post.startswith(b"HTTP/1.1 405 ")
    assert bad.startswith(b"HTTP/1.1 404 ")


def alpn_handshake(port: int, name: str) -> tuple[str | None, bytes | None]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the challenge certificate is self-signed by design
    context.set_alpn_protocols(["acme-tls/1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        return tls.selected_alpn_protocol(), tls.getpeercert(binary_form=True)


def test_tls_alpn01_presents_the_acme_identifier_for_the_name(tmp_path: Path) -> None:
    board = ChallengeBoard(tmp_path)
    board.add_alpn("mail.example.test", "token.thumb")
    responder = TlsAlpnResponder(board, "127.0.0.1", free_port())

    async def scenario() -> tuple[str | None, bytes | None]:
        await responder.start()
        try:
            good = await asyncio.to_thread(alpn_handshake, responder.port, "mail.example.test")
            with pytest.raises(ssl.SSLError):
                await asyncio.to_thread(alpn_handshake, responder.port, "other.example.test")
            return good
        finally:
            await responder.close()

    protocol, der = asyncio.run(scenario())
    assert protocol == "acme-tls/1"
    assert der is not None
    certificate = x509.load_der_x509_certificate(der)
    extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    assert extension.critical
    value = extension.value.value  # type: ignore[attr-defined]
    assert value == b"\x04\x20" + hashlib.sha256(b"token.thumb").digest()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    assert list(tmp_path.iterdir()) == []  # the certificate's file lived only to be loaded


def test_http01_on_every_address_answers_over_ipv4_and_ipv6(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    board = ChallengeBoard(tmp_path)
    board.http["t"] = b"t.k"
    responder = Http01Responder(board, "*", free_port())

    async def fetch(host: str) -> bytes:
        reader, writer = await asyncio.open_connection(host, responder.port)
        writer.write(b"GET /.well-known/acme-challenge/t HTTP/1.1\r\n\r\n")
        data = await reader.read()
        writer.close()
        return data

    async def scenario() -> list[bytes]:
        await responder.start()
        try:
            return [await fetch("127.0.0.1"), await fetch("::1")]
        finally:
            await responder.close()

    assert all(reply.endswith(b"\r\n\r\nt.k") for reply in asyncio.run(scenario()))
