"""A one-connection TLS server on 127.0.0.1 in a thread, to probe a server-side SSLContext.

The server side does the handshake and nothing else; the client side reports what was
negotiated, or the handshake error.  Real sockets, real OpenSSL on both ends.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509

IO_TIMEOUT = 30.0  # a safety net against a hung handshake, not a timing threshold


@dataclass(frozen=True)
class Negotiated:
    version: str | None
    cipher: str | None
    compression: str | None
    serial: int  # of the leaf certificate the server sent


@dataclass(frozen=True)
class CertFiles:
    ca: trustme.CA  # the root: the only certificate clients trust
    ca_pem: Path
    certificate: Path  # leaf + intermediate
    private_key: Path
    serial: int

    def client_context(self, **versions: ssl.TLSVersion) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        for name, version in versions.items():
            setattr(context, name, version)
        return context


def issue(
    directory: Path,
    ca: trustme.CA | None = None,
    *,
    chain: bool = True,
    key_type: trustme.KeyType = trustme.KeyType.ECDSA,
) -> CertFiles:
    """A localhost leaf issued by an intermediate of ``ca`` (a new root if None).

    With ``chain=False`` the certificate file holds the leaf alone.
    """
    directory.mkdir(parents=True, exist_ok=True)
    root = ca or trustme.CA(organization_name="mailslot server tests", key_type=key_type)
    intermediate = root.create_child_ca(key_type=key_type)
    leaf = intermediate.issue_cert("localhost", "127.0.0.1", "::1", key_type=key_type)
    ca_pem = directory / "ca.pem"
    root.cert_pem.write_to_path(str(ca_pem))
    pems = leaf.cert_chain_pems if chain else leaf.cert_chain_pems[:1]
    certificate = directory / "fullchain.pem"
    certificate.write_bytes(b"".join(blob.bytes() for blob in pems))
    private_key = directory / "privkey.pem"
    leaf.private_key_pem.write_to_path(str(private_key))
    return CertFiles(root, ca_pem, certificate, private_key, serial_of_pem(pems[0].bytes()))


def serial_of_pem(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def serial_of_der(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "localhost"
) -> Negotiated:
    """Connect ``client`` to a one-shot server using ``server``; raise the client's error."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(IO_TIMEOUT)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(IO_TIMEOUT)
                try:
                    with server.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"+OK\r\n")
                        tls.recv(1)
                except (ssl.SSLError, OSError):
                    pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw,
                client.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                assert tls.recv(5) == b"+OK\r\n"
                cipher = tls.cipher()
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return Negotiated(
                    tls.version(),
                    cipher[0] if cipher else None,
                    tls.compression(),
                    serial_of_der(der),
                )
        finally:
            thread.join(IO_TIMEOUT)
