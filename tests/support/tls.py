"""A throwaway CA, an intermediate and a server certificate for localhost, 127.0.0.1 and ::1.

The leaf is issued by an intermediate CA and clients trust only the root, so every client
that verifies also checks that the server sends its full chain (leaf + intermediate), as a
``fullchain.pem`` from a public CA requires.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    """PEM files on disk: what the server config names and what clients trust."""

    ca_pem: Path  # the root CA certificate, the only thing clients trust
    certificate: Path  # leaf followed by the intermediate
    private_key: Path

    def client_context(
        self,
        *,
        minimum: ssl.TLSVersion | None = None,
        maximum: ssl.TLSVersion | None = None,
    ) -> ssl.SSLContext:
        """A verifying client context that trusts only the throwaway root CA."""
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        if minimum is not None:
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
        return context


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    root = trustme.CA(organization_name="mailslot tests root")
    intermediate = root.create_child_ca()
    # A CN as well as the SANs: fetchmail 6.4 falls back to the CN when it matches no SAN.
    leaf = intermediate.issue_cert("localhost", "127.0.0.1", "::1", common_name="localhost")
    ca_pem = directory / "ca.pem"
    root.cert_pem.write_to_path(str(ca_pem))
    certificate = directory / "fullchain.pem"
    certificate.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    private_key = directory / "privkey.pem"
    leaf.private_key_pem.write_to_path(str(private_key))
    private_key.chmod(0o600)
    return TlsFiles(ca_pem=ca_pem, certificate=certificate, private_key=private_key)
