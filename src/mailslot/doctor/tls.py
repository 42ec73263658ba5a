"""Handshakes with the server: the certificate chain it sends, protocol versions, cipher suites.

Every probe is a real handshake with the stdlib ``ssl`` module (OpenSSL), over implicit TLS
(RFC 8314 section 3.3) or after STLS (RFC 2595 section 4).  Probing contexts verify nothing
(the certificate checks are separate) and run at ``@SECLEVEL=0`` with explicit version bounds,
so that the client itself is willing to offer what the server should refuse.  What the local
OpenSSL cannot offer at all is reported as "could not check" (a warning), never as ok.

Checks:

* ``tls.v1_0``, ``tls.v1_1``: RFC 8996 deprecates TLS 1.0 and 1.1; accepting either fails.
* ``tls.modern``: TLS 1.2 (RFC 5246) and TLS 1.3 (RFC 8446) offered; RFC 9325 section 3.1.1
  asks for 1.2 and recommends 1.3.  No 1.3 is a warning, neither is a failure.
* ``tls.suites``: TLS 1.2 cipher suites, by category (RFC 9325 section 4, RFC 7465):
  broken ones (NULL, anonymous, export, RC4, DES, 3DES, MD5) fail; static-RSA key exchange (no
  forward secrecy, RFC 9325 section 4.1) and CBC modes (Lucky13-class padding oracles; RFC 9325
  section 4.2 recommends AEAD only) are warnings.  TLS 1.3 has only AEAD forward-secret suites.
"""

from __future__ import annotations

import contextlib
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from mailslot.doctor.net import Pop3Error, open_session
from mailslot.doctor.results import Check, failure, ok, warning

ALL_CIPHERS = "ALL:COMPLEMENTOFALL:@SECLEVEL=0"
MAX_ACCEPTED_PER_CATEGORY = 8  # bounds the handshakes one category can cost


@dataclass(frozen=True)
class Endpoint:
    """Where to handshake: implicit TLS, or plaintext then STLS."""

    host: str
    port: int
    stls: bool
    timeout: float


@dataclass
class Handshake:
    """What one successful handshake showed."""

    version: str
    cipher: str
    chain: list[x509.Certificate] = field(default_factory=list)


class Inconclusive(Exception):
    """The probe failed for a reason other than the server refusing TLS parameters."""


class Refused(Exception):
    """The server refused the handshake: an alert, a lower or higher version, or a close."""


# Reasons (OpenSSL's SSL_R_* names, as ssl.SSLError.reason) that mean the *server* said no.
# Any other reason is the local OpenSSL stopping a handshake the server was willing to make
# (at OpenSSL 3's default security level, e.g. LEGACY_SIGALG_DISALLOWED_OR_UNSUPPORTED after a
# TLS 1.0 ServerHello): reading that as a refusal would call an accepted TLS 1.0 "refused".
_SERVER_REFUSALS = (
    "UNSUPPORTED_PROTOCOL",
    "WRONG_VERSION_NUMBER",
    "VERSION_TOO_LOW",
    "UNEXPECTED_EOF_WHILE_READING",
    "UNEXPECTED_MESSAGE",
)


def refused_by_server(exc: ssl.SSLError) -> bool:
    """Whether a failed handshake is the server's refusal (see _SERVER_REFUSALS)."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return True
    reason = exc.reason or ""
    return reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")) or (
        reason in _SERVER_REFUSALS
    )


def probe_context(
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str = ALL_CIPHERS,
) -> ssl.SSLContext:
    """A client context that verifies nothing and will offer old protocols and suites."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers(ciphers)
    with warnings.catch_warnings():
        # ssl deprecates TLSv1 and TLSv1_1 as bounds; offering them is this probe's purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
    return context


def can_offer(context: ssl.SSLContext) -> bool:
    """Whether this OpenSSL produces a ClientHello with ``context`` (no network involved).

    A local OpenSSL built or configured without TLS 1.0 answers "no protocols available"
    before sending anything; that must read as "could not check", not as "refused".
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.pending > 0
    except ssl.SSLError:
        return False
    return True


def peer_chain(sock: ssl.SSLSocket) -> list[x509.Certificate]:
    # CPython 3.10-3.12 have the unverified chain on the private _sslobj only; 3.13 makes it
    # public (SSLSocket.get_unverified_chain).  Fall back to the leaf alone.
    getter: Callable[[], Any] | None = getattr(sock, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(sock, "_sslobj", None), "get_unverified_chain", None)
    certificates: list[x509.Certificate] = []
    if getter is not None:
        for item in getter() or []:
            der = item if isinstance(item, bytes) else item.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
            certificates.append(x509.load_der_x509_certificate(der))
        return certificates
    leaf = sock.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(leaf)] if leaf else []


def handshake(endpoint: Endpoint, context: ssl.SSLContext) -> Handshake:
    """One handshake; raises :class:`Refused` when the server refuses, else
    :class:`Inconclusive` for anything that is not an answer about the parameters."""
    try:
        opened = open_session(
            endpoint.host, endpoint.port, endpoint.timeout, context=context, stls=endpoint.stls
        )
    except ssl.SSLError as exc:
        if refused_by_server(exc):
            raise Refused(exc.reason or str(exc)) from exc
        raise Inconclusive(f"the local OpenSSL stopped the handshake: {exc.reason or exc}") from exc
    except (ConnectionResetError, BrokenPipeError) as exc:
        # A server that drops the connection at our ClientHello refuses it.
        raise Refused(str(exc)) from exc
    except (OSError, Pop3Error) as exc:
        raise Inconclusive(str(exc) or type(exc).__name__) from exc
    sock = opened.channel.sock
    try:
        assert isinstance(sock, ssl.SSLSocket)
        cipher = sock.cipher()
        result = Handshake(sock.version() or "?", cipher[0] if cipher else "?", peer_chain(sock))
        with contextlib.suppress(OSError, Pop3Error):
            opened.channel.command("QUIT")
        return result
    finally:
        opened.channel.close()


_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def accepts_version(endpoint: Endpoint, version: str, ciphers: str = ALL_CIPHERS) -> bool | str:
    """True/False, or the reason it could not be checked."""
    tls = _VERSIONS[version]
    context = probe_context(tls, tls, ciphers)
    if not can_offer(context):
        return f"the local OpenSSL ({ssl.OPENSSL_VERSION}) cannot offer TLS {version}"
    try:
        handshake(endpoint, context)
    except Refused:
        return False
    except Inconclusive as exc:
        return f"the probe failed: {exc}"
    return True


def check_versions(endpoint: Endpoint) -> list[Check]:
    """``tls.v1_0``, ``tls.v1_1`` and ``tls.modern`` for one endpoint."""
    port = endpoint.port
    checks: list[Check] = []
    for version in ("1.0", "1.1"):
        id = f"tls.v{version.replace('.', '_')}"
        accepted = accepts_version(endpoint, version)
        if accepted is True:
            checks.append(
                failure(
                    id,
                    f"TLS {version} is accepted (deprecated by RFC 8996)",
                    "set the server's minimum TLS version to 1.2 (mailslot: the default; "
                    "Dovecot: ssl_min_protocol = TLSv1.2)",
                    port,
                )
            )
        elif accepted is False:
            checks.append(ok(id, f"TLS {version} is refused", port))
        else:
            checks.append(
                warning(
                    id,
                    f"could not check TLS {version}: {accepted}",
                    "run the doctor where OpenSSL can offer old versions, or check with "
                    "another scanner",
                    port,
                )
            )
    modern = {version: accepts_version(endpoint, version) for version in ("1.2", "1.3")}
    offered = [v for v, accepted in modern.items() if accepted is True]
    unknown = {v: reason for v, reason in modern.items() if isinstance(reason, str)}
    detail = {"offered": offered}
    if offered == ["1.2", "1.3"]:
        checks.append(ok("tls.modern", "TLS 1.2 and 1.3 are offered", port, **detail))
    elif "1.3" in offered:
        checks.append(ok("tls.modern", "TLS 1.3 is offered (1.2 is not)", port, **detail))
    elif "1.2" in offered:
        checks.append(
            warning(
                "tls.modern",
                "TLS 1.2 is offered, TLS 1.3 is not"
                + (f" ({unknown['1.3']})" if "1.3" in unknown else ""),
                "enable TLS 1.3 (OpenSSL 1.1.1 or later does it by default)",
                port,
                **detail,
            )
        )
    else:
        reason = "; ".join(f"TLS {v}: {r}" for v, r in unknown.items())
        checks.append(
            failure(
                "tls.modern",
                "neither TLS 1.2 nor TLS 1.3 could be negotiated"
                + (f" ({reason})" if reason else ""),
                "enable TLS 1.2 and 1.3 on the server",
                port,
                **detail,
            )
        )
    return checks


# -- cipher suites ---------------------------------------------------------------------------

_PSK_OR_SRP = ("psk", "srp")


def _category(cipher: dict[str, Any]) -> str | None:
    """The weakness of a TLS 1.2 suite: "broken", "no-fs", "cbc", or None when it is fine."""
    name = str(cipher["name"])
    kea, auth, symmetric = str(cipher["kea"]), str(cipher["auth"]), cipher["symmetric"]
    if (
        symmetric is None
        or auth == "auth-null"
        or any(word in name for word in ("RC4", "DES", "EXP", "MD5", "NULL", "ADH", "AECDH"))
    ):
        return "broken"
    if kea == "kx-rsa":
        return "no-fs"
    if not cipher["aead"]:
        return "cbc"
    return None


def suite_categories() -> dict[str, list[str]]:
    """The TLS 1.2 suites this OpenSSL can offer, by weakness (PSK and SRP left out: a
    server picks those only for clients holding a pre-shared key or an SRP password)."""
    context = probe_context(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    categories: dict[str, list[str]] = {"broken": [], "no-fs": [], "cbc": []}
    for cipher in context.get_ciphers():
        if cipher.get("protocol") == "TLSv1.3":
            continue
        if any(word in str(cipher["kea"]) for word in _PSK_OR_SRP):
            continue
        category = _category(dict(cipher))
        if category is not None:
            categories[category].append(str(cipher["name"]))
    return categories


def _unavailable(categories: dict[str, list[str]]) -> list[str]:
    names = [name for names in categories.values() for name in names]
    missing = []
    for label, marker in (("RC4", "RC4"), ("3DES", "DES-CBC3"), ("export", "EXP")):
        if not any(marker in name for name in names):
            missing.append(label)
    return missing


def _accepted_suites(endpoint: Endpoint, names: list[str]) -> tuple[list[str], str | None]:
    """Offer ``names`` until the server refuses them all; return what it picked."""
    remaining, accepted = list(names), list[str]()
    while remaining and len(accepted) < MAX_ACCEPTED_PER_CATEGORY:
        context = probe_context(
            ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, ":".join(remaining) + ":@SECLEVEL=0"
        )
        try:
            chosen = handshake(endpoint, context).cipher
        except Refused:
            break
        except Inconclusive as exc:
            return accepted, str(exc)
        accepted.append(chosen)
        if chosen not in remaining:
            break
        remaining.remove(chosen)
    return accepted, None


def check_suites(endpoint: Endpoint, tls12: bool) -> Check:
    """``tls.suites``: which weak TLS 1.2 suites the server accepts (see the module doc)."""
    port = endpoint.port
    if not tls12:
        return ok("tls.suites", "TLS 1.2 is not offered: TLS 1.3 suites are all AEAD", port)
    categories = suite_categories()
    found: dict[str, list[str]] = {}
    for category, names in categories.items():
        if not names:
            continue
        accepted, problem = _accepted_suites(endpoint, names)
        if problem is not None:
            return warning(
                "tls.suites",
                f"could not check the cipher suites: {problem}",
                "run the doctor again; check the server's log",
                port,
            )
        if accepted:
            found[category] = accepted
    missing = _unavailable(categories)
    details: dict[str, list[str]] = {
        "broken": found.get("broken", []),
        "no_forward_secrecy": found.get("no-fs", []),
        "cbc": found.get("cbc", []),
        "not_checked": missing,
    }
    note = f" (not checked, the local OpenSSL lacks them: {', '.join(missing)})" if missing else ""
    fix = (
        "offer only ECDHE (or DHE) with AES-GCM or ChaCha20-Poly1305 on TLS 1.2, as Mozilla's "
        "'intermediate' profile does"
    )
    if "broken" in found:
        return failure(
            "tls.suites",
            f"broken TLS 1.2 suites accepted: {', '.join(found['broken'])}",
            fix,
            port,
            **details,
        )
    weak = found.get("no-fs", []) + found.get("cbc", [])
    if weak:
        kinds = []
        if "no-fs" in found:
            kinds.append("without forward secrecy")
        if "cbc" in found:
            kinds.append("CBC")
        return warning(
            "tls.suites",
            f"weak TLS 1.2 suites accepted ({' and '.join(kinds)}): {', '.join(weak)}",
            fix,
            port,
            **details,
        )
    return ok(
        "tls.suites",
        "TLS 1.2 accepts only forward-secret AEAD suites" + note,
        port,
        **details,
    )
