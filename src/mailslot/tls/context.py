"""TLS for implicit-TLS listeners (RFC 8314 section 3.3) and STLS (RFC 2595 section 4).

The policy is one of Mozilla's Server Side TLS profiles (v5.7, https://ssl-config.mozilla.org):

- ``intermediate`` (the default): TLS 1.2 and 1.3; the profile's TLS 1.2 suites restricted to
  ECDHE (forward secrecy, AEAD; its DHE suites would need finite-field groups, which the profile
  leaves out of its group list); TLS 1.3 suites are OpenSSL's defaults, the profile's three.
- ``modern``: TLS 1.3 only.

Both offer only the key exchange groups X25519, P-256 and P-384, for TLS 1.2 and 1.3 alike
(OpenSSL's defaults add X448, P-521 and, for TLS 1.3, the ffdhe groups, which the profiles and
scanners such as sslyze flag), no compression and no renegotiation.  The certificate file holds
the full chain (leaf first), which OpenSSL serves whole.  :class:`TlsContexts` holds the
context new handshakes use (and, with several certificates, the ones SNI switches to); on
a reload (SIGHUP, or a changed file) it builds fresh ones from the files and swaps them in, so
established sessions are not touched and nothing of the old certificate survives (an
``SSLContext`` keeps one certificate per key type, so loading an RSA chain into a context that
had an ECDSA one would leave the old ECDSA certificate served to clients that prefer it).

Python's :mod:`ssl` (3.11 to 3.14) cannot set a group list: ``set_ecdh_curve`` sets one curve
for TLS 1.2 and none for TLS 1.3.  :func:`set_groups` therefore makes the one OpenSSL call
(``SSL_CTX_set1_groups_list``) on the context's own ``SSL_CTX`` through :mod:`ctypes`, in the
very libssl that :mod:`ssl` uses (no second OpenSSL: a binding such as pyOpenSSL brings its own
library, whose contexts asyncio cannot use), after checking that the pointer it found is that
context's.  It is configuration, not cryptography: OpenSSL does all of the TLS.
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from mailslot.config import TlsConfig
from mailslot.tls.certificates import CertificateError, Finding, KeyPair, Loaded, load_pairs
from mailslot.tls.sni import SniTable

Profile = Literal["intermediate", "modern"]

# Mozilla Server Side TLS "intermediate" (v5.7), TLS 1.2 part, ECDHE suites only.
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
# Both profiles' groups, in OpenSSL's names, most preferred first.
GROUPS = "X25519:P-256:P-384"

_SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL's ssl.h; SSL_CTX_set1_groups_list is this ctrl
# OpenSSL's SSL_VERIFY_* bits as Python's ssl module reports them (its _ssl.c does the same).
_VERIFY_MODES = {0: ssl.CERT_NONE, 1: ssl.CERT_OPTIONAL, 3: ssl.CERT_REQUIRED}


class TlsPolicyError(ssl.SSLError):
    """The TLS policy could not be applied to a context (an unexpected OpenSSL or Python)."""


def server_context(
    certificate: Path, private_key: Path, profile: Profile = "intermediate"
) -> ssl.SSLContext:
    """A server-side context with ``profile``'s policy and the chain and key loaded."""
    context = policy_context(profile)
    context.load_cert_chain(certificate, private_key)
    return context


def policy_context(profile: Profile = "intermediate") -> ssl.SSLContext:
    """A server-side context with ``profile``'s policy and no certificate yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if profile == "modern":
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    set_groups(context, GROUPS)
    return context


class _LibSsl:
    """The libssl functions :func:`set_groups` needs, from the library :mod:`_ssl` links."""

    def __init__(self) -> None:
        # dlsym() on _ssl's handle searches its dependencies too, so this finds the libssl
        # that _ssl itself was linked against, whatever its file name.
        library = ctypes.CDLL(_ssl.__file__)
        self.ctrl = library.SSL_CTX_ctrl
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ctrl.restype = ctypes.c_long
        self.get_options = library.SSL_CTX_get_options
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64
        self.get_verify_mode = library.SSL_CTX_get_verify_mode
        self.get_verify_mode.argtypes = [ctypes.c_void_p]
        self.get_verify_mode.restype = ctypes.c_int


_libssl: _LibSsl | None = None


def _ssl_ctx(context: ssl.SSLContext, libssl: _LibSsl) -> int:
    """The address of ``context``'s ``SSL_CTX``, checked against what Python reports.

    CPython's ``PySSLContext`` begins with the object header and then the ``SSL_CTX``
    pointer.  The pointer is accepted only if OpenSSL, asked through it, reports the options
    and verify mode that Python reports for the context; anything else is refused, never used.
    """
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        raise TlsPolicyError("no SSL_CTX found in the ssl.SSLContext")
    verify_mode = _VERIFY_MODES.get(libssl.get_verify_mode(pointer))
    if libssl.get_options(pointer) != int(context.options) or verify_mode != context.verify_mode:
        raise TlsPolicyError("the SSL_CTX found does not belong to the ssl.SSLContext")
    return pointer


def set_groups(context: ssl.SSLContext, groups: str) -> None:
    """Offer only ``groups`` (colon-separated OpenSSL names) for key exchange, TLS 1.2 and 1.3."""
    global _libssl
    if _libssl is None:
        try:
            _libssl = _LibSsl()
        except (OSError, AttributeError) as exc:
            raise TlsPolicyError(f"cannot reach OpenSSL's SSL_CTX_ctrl: {exc}") from exc
    pointer = _ssl_ctx(context, _libssl)
    if _libssl.ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) != 1:
        raise TlsPolicyError(f"OpenSSL refused the group list {groups}")


class TlsContexts:
    """The server context for new handshakes, replaced whole on reload.

    ``certificate`` and ``private_key`` are the default pair (``[tls]``): served to clients
    that send no server name or one no other pair serves.  ``more`` are the
    ``[[tls.certificates]]`` pairs, each served to the names of its subjectAltName
    (:mod:`mailslot.tls.sni`).  Every load runs the checks of
    :mod:`mailslot.tls.certificates` first: a file with an error raises
    :class:`~mailslot.tls.certificates.CertificateError` (an :class:`ssl.SSLError`) and the
    contexts in use stay; :attr:`warnings` are the last load's warnings, for the log, and
    :attr:`loaded` the pairs it loaded (the default first), for the metrics.
    """

    def __init__(
        self,
        certificate: Path,
        private_key: Path,
        profile: Profile = "intermediate",
        *,
        more: Sequence[KeyPair] = (),
    ) -> None:
        self.pairs = (KeyPair("tls", certificate, private_key), *more)
        self._profile: Profile = profile
        self.warnings: list[Finding] = []
        self.loaded: list[Loaded] = []
        self.names: SniTable
        self.reload()

    @property
    def current(self) -> ssl.SSLContext:
        """The context a handshake starts with (it switches by SNI from there)."""
        return self.names.default

    def reload(self) -> None:
        """Build the contexts from the files again; on any error the old ones stay in use.

        The new contexts have session ticket keys of their own: tickets issued before no
        longer resume, and pre-forked workers, which shared the keys of the context their
        parent built, now each have their own (docs/configuration.md, ``[tls]``).
        """
        loaded, findings = load_pairs(self.pairs, profile=self._profile)
        errors = [f for f in findings if f.severity == "error"]
        if errors or len(loaded) != len(self.pairs):
            raise CertificateError(errors or findings)
        self.names = SniTable(loaded, lambda: policy_context(self._profile))
        self.warnings = findings
        self.loaded = loaded


def _pairs(tls: TlsConfig) -> list[KeyPair]:
    return [
        KeyPair(f"tls.certificates[{index}]", entry.certificate, entry.private_key)
        for index, entry in enumerate(tls.certificates)
    ]


def contexts_for(tls: TlsConfig) -> TlsContexts | None:
    """The contexts of ``tls``'s certificates, if it has a default pair."""
    if tls.certificate is None or tls.private_key is None:
        return None
    return TlsContexts(tls.certificate, tls.private_key, tls.profile, more=_pairs(tls))


def key_pairs(tls: TlsConfig) -> list[KeyPair]:
    """Every pair ``tls`` names, the default first."""
    if tls.certificate is None or tls.private_key is None:
        return _pairs(tls)
    return [KeyPair("tls", tls.certificate, tls.private_key), *_pairs(tls)]
