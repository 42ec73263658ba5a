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
context new handshakes use; on SIGHUP it builds a fresh one from the files and swaps it in, so
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
from pathlib import Path
from typing import Literal

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
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if profile == "modern":
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    set_groups(context, GROUPS)
    context.load_cert_chain(certificate, private_key)
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
    """The server context for new handshakes, replaced whole on reload."""

    def __init__(
        self, certificate: Path, private_key: Path, profile: Profile = "intermediate"
    ) -> None:
        self._certificate = certificate
        self._private_key = private_key
        self._profile: Profile = profile
        self.current = server_context(certificate, private_key, profile)

    def reload(self) -> None:
        """Build a context from the files again; on any error the old one stays in use.

        The new context has session ticket keys of its own: tickets issued before no longer
        resume, and pre-forked workers, which shared the keys of the context their parent
        built, now each have their own (docs/configuration.md, ``[tls]``).
        """
        self.current = server_context(self._certificate, self._private_key, self._profile)
