"""TLS for implicit-TLS listeners (RFC 8314 section 3.3) and STLS (RFC 2595 section 4).

TLS 1.2 and 1.3 only, Mozilla's "intermediate" TLS 1.2 suites restricted to ECDHE (forward
secrecy, AEAD), no compression, no renegotiation.  The certificate file holds the full chain
(leaf first), which OpenSSL serves whole.  :class:`TlsContexts` holds the context new
handshakes use; on SIGHUP it builds a fresh one from the files and swaps it in, so established
sessions are not touched and nothing of the old certificate survives (an ``SSLContext`` keeps
one certificate per key type, so loading an RSA chain into a context that had an ECDSA one
would leave the old ECDSA certificate served to clients that prefer it).
"""

from __future__ import annotations

import ssl
from pathlib import Path

# Mozilla Server Side TLS "intermediate" (v5.7), TLS 1.2 part, ECDHE suites only.  TLS 1.3
# suites are OpenSSL's defaults, all of which are AEAD.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def server_context(certificate: Path, private_key: Path) -> ssl.SSLContext:
    """A server-side context with the policy above and the chain and key loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(certificate, private_key)
    return context


class TlsContexts:
    """The server context for new handshakes, replaced whole on reload."""

    def __init__(self, certificate: Path, private_key: Path) -> None:
        self._certificate = certificate
        self._private_key = private_key
        self.current = server_context(certificate, private_key)

    def reload(self) -> None:
        """Build a context from the files again; on any error the old one stays in use.

        The new context has session ticket keys of its own: tickets issued before no longer
        resume, and pre-forked workers, which shared the keys of the context their parent
        built, now each have their own (docs/configuration.md, ``[tls]``).
        """
        self.current = server_context(self._certificate, self._private_key)
