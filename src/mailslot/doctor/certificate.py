"""Certificate checks on the chain a server sent: trust, intermediates, name, expiry, key.

* ``cert.chain``: the chain verifies against the trust store (OpenSSL's verifier, through the
  stdlib ``ssl`` handshake; RFC 5280 section 6).
* ``cert.intermediates``: the server sends every certificate between its leaf and a trusted
  root.  RFC 8446 section 4.4.2 / RFC 5246 section 7.4.2 make the server send its chain;
  strict clients (Thunderbird on mobile, fetchmail, OpenSSL-based tools) never fetch a missing
  intermediate from the AIA URL, so a chain that only verifies with an intermediate supplied
  from elsewhere is a failure.
* ``cert.name``: RFC 9525 section 6 (which obsoletes RFC 6125): DNS-IDs and IP-IDs of the
  subjectAltName only, a wildcard only as the whole left-most label, no fallback to the
  subject's CN (RFC 6125 section 6.4.4 allowed one; RFC 9525 dropped it, as clients have).
* ``cert.expiry``: a warning within :data:`EXPIRY_WARNING_DAYS` days of notAfter.
* ``cert.key``: RSA below 2048 bits fails (NIST SP 800-131A, CA/B Forum Baseline Requirements
  6.1.5); ECDSA P-256 and P-384 are ok; other keys are a warning (few POP3 clients take them).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID

from mailslot.doctor.results import Check, failure, ok, warning

EXPIRY_WARNING_DAYS = 21
MIN_RSA_BITS = 2048

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) that SSLCertVerificationError.verify_code carries.
V_UNABLE_TO_GET_ISSUER_CERT = 2
V_CERT_NOT_YET_VALID = 9
V_CERT_HAS_EXPIRED = 10
V_DEPTH_ZERO_SELF_SIGNED = 18
V_SELF_SIGNED_IN_CHAIN = 19
V_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
V_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21


@dataclass(frozen=True)
class Verification:
    """The outcome of a verifying handshake: ``code`` 0 means the chain verified."""

    code: int
    message: str
    trust: str  # what was trusted, for the report: "the system trust store and ca.pem"


def describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, Exception):  # InvalidSignature or an unsupported key
        return False
    return True


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, or a key type the check does not support
        return False
    return True


def check_chain(chain: Sequence[x509.Certificate], verification: Verification, port: int) -> Check:
    """``cert.chain``: did the chain verify, and if not, the verifier's reason in words."""
    leaf = chain[0]
    if verification.code == 0:
        return ok("cert.chain", f"verifies against {verification.trust}", port)
    code, reason = verification.code, verification.message
    if code == V_DEPTH_ZERO_SELF_SIGNED or (len(chain) == 1 and _self_signed(leaf)):
        return failure(
            "cert.chain",
            f"the certificate is self-signed ({describe(leaf)}): no client trusts it",
            "use a certificate from a public CA (e.g. Let's Encrypt), or give clients your "
            "private CA's certificate (--cafile checks with it)",
            port,
            verify_code=code,
            verify_message=reason,
        )
    if code in (V_CERT_HAS_EXPIRED, V_CERT_NOT_YET_VALID):
        return failure(
            "cert.chain",
            f"does not verify: {reason}",
            "renew the certificate (see cert.expiry) and reload the server",
            port,
            verify_code=code,
            verify_message=reason,
        )
    if code in (
        V_UNABLE_TO_GET_ISSUER_CERT,
        V_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        V_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
        V_SELF_SIGNED_IN_CHAIN,
    ):
        return failure(
            "cert.chain",
            f"does not verify against {verification.trust}: {reason}",
            "serve the full chain (leaf then intermediates: fullchain.pem) from a CA that "
            "clients trust; for a private CA, give clients its certificate",
            port,
            verify_code=code,
            verify_message=reason,
        )
    return failure(
        "cert.chain",
        f"does not verify: {reason}",
        "serve a valid certificate chain from a CA that clients trust",
        port,
        verify_code=code,
        verify_message=reason,
    )


def _aia_issuer_url(cert: x509.Certificate) -> str | None:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except x509.ExtensionNotFound:
        return None
    for description in aia.value:
        if description.access_method == AuthorityInformationAccessOID.CA_ISSUERS:
            location = description.access_location
            if isinstance(location, x509.UniformResourceIdentifier):
                return location.value
    return None


def check_intermediates(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    verification: Verification,
    port: int,
) -> Check:
    """``cert.intermediates``: follow issuers through what the server sent.

    From the leaf, each certificate's issuer is looked for among the certificates the server
    sent.  Where the walk stops, the last certificate must be self-signed (a root, sent though
    unneeded) or issued by a trusted root.  When it is issued by something neither sent nor a
    trusted root, the server is missing an intermediate: named specifically, because it is the
    mistake behind "works in my browser, fails in fetchmail" (browsers fetch or cache it).
    """
    leaf = chain[0]
    if len(chain) == 1 and _self_signed(leaf):
        return ok("cert.intermediates", "a self-signed certificate needs no intermediate", port)
    sent = list(chain)
    current, path = leaf, [leaf]
    while not _self_signed(current):
        issuer = next((c for c in sent if c not in path and _issued_by(current, c)), None)
        if issuer is None:
            break
        path.append(issuer)
        current = issuer
    unused = [describe(c) for c in sent if c not in path]
    if _self_signed(current):
        return ok(
            "cert.intermediates",
            f"the server sends the whole chain ({len(path)} certificates, the root included, "
            "which is harmless but unneeded)",
            port,
            unused=unused,
        )
    trusted = next((r for r in roots if _issued_by(current, r)), None)
    if trusted is not None:
        if not _self_signed(trusted):
            return warning(
                "cert.intermediates",
                f"verifies only because the local trust store holds the intermediate "
                f"{describe(trusted)}; clients with another store fail",
                "append the intermediate certificate(s) to the served certificate file "
                "(fullchain.pem)",
                port,
            )
        count = len(path)
        return ok(
            "cert.intermediates",
            f"the server sends its chain ({count} certificate{'s' if count != 1 else ''}) "
            f"up to the trusted root {describe(trusted)}",
            port,
            unused=unused,
        )
    missing = current.issuer.rfc4514_string()
    url = _aia_issuer_url(current)
    if verification.code == 0:
        # Verified, yet not through what was sent: the verifier found the issuer elsewhere
        # (a trust store holding intermediates).  Still fragile for other clients.
        return warning(
            "cert.intermediates",
            f"the server does not send {missing}; this machine verifies anyway",
            "append the intermediate certificate(s) to the served certificate file (fullchain.pem)",
            port,
            missing=missing,
        )
    return failure(
        "cert.intermediates",
        f"missing intermediate: the server does not send the issuer {missing}, and it is "
        "not a trusted root; strict clients (fetchmail, Thunderbird on mobile) will fail",
        "serve the full chain: the leaf followed by its intermediate(s), e.g. Let's "
        "Encrypt's fullchain.pem rather than cert.pem"
        + (f" (the issuer's certificate is at {url})" if url else ""),
        port,
        missing=missing,
        aia_issuer=url,
    )


def _subject_alt_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    ips = [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


def dns_id_matches(reference: str, presented: str) -> bool:
    """RFC 9525 section 6.3: case-insensitive, a ``*`` only as the whole left-most label,
    matching exactly one label (never in an A-label, never the only label before a TLD)."""
    reference = reference.lower().rstrip(".")
    presented = presented.lower().rstrip(".")
    if not presented.startswith("*."):
        return "*" not in presented and reference == presented
    rest = presented[2:]
    if "*" in rest or rest.count(".") < 1:
        return False
    head, _, tail = reference.partition(".")
    return bool(head) and tail == rest


def check_name(cert: x509.Certificate, host: str, is_ip: bool, port: int) -> Check:
    """``cert.name``: the HOST (or IP) is among the leaf's subjectAltName (RFC 9525 s. 6)."""
    dns, ips = _subject_alt_names(cert)
    names = dns + ips
    if is_ip:
        wanted = ipaddress.ip_address(host)
        matched = any(ipaddress.ip_address(ip) == wanted for ip in ips)
    else:
        try:
            reference = host.encode("idna").decode("ascii")
        except UnicodeError:
            reference = host
        matched = any(dns_id_matches(reference, name) for name in dns)
    if matched:
        return ok("cert.name", f"{host} matches the certificate", port, names=names)
    common = [
        str(attr.value) for attr in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    ]
    hint = ""
    if any(c.lower() == host.lower() for c in common):
        hint = " (only the subject CN matches, which RFC 9525 clients ignore)"
    kind = "IP address" if is_ip else "name"
    return failure(
        "cert.name",
        f"the {kind} {host} is not in the certificate's subjectAltName "
        f"{', '.join(names) or '(none)'}{hint}",
        f"issue a certificate whose subjectAltName includes {host}, or connect with a name "
        "the certificate carries",
        port,
        names=names,
    )


def check_expiry(cert: x509.Certificate, now: datetime.datetime, port: int) -> Check:
    """``cert.expiry``: failure outside notBefore..notAfter (RFC 5280 section 4.1.2.5),
    a warning within :data:`EXPIRY_WARNING_DAYS` days of the end."""
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    stamp = after.strftime("%Y-%m-%d %H:%M UTC")
    if now < before:
        return failure(
            "cert.expiry",
            f"not valid yet: valid from {before:%Y-%m-%d %H:%M} UTC",
            "check the server's clock and the certificate's dates; reissue if they are wrong",
            port,
            not_before=before.isoformat(),
            not_after=after.isoformat(),
        )
    if now > after:
        return failure(
            "cert.expiry",
            f"expired on {stamp}",
            "renew the certificate and reload the server (for mailslot: SIGHUP)",
            port,
            not_before=before.isoformat(),
            not_after=after.isoformat(),
        )
    days = (after - now).days
    if days < EXPIRY_WARNING_DAYS:
        return warning(
            "cert.expiry",
            f"expires in {days} days ({stamp})",
            "renew now; automate renewal (ACME clients renew 30 days ahead)",
            port,
            days_left=days,
            not_after=after.isoformat(),
        )
    return ok(
        "cert.expiry",
        f"valid for {days} more days ({stamp})",
        port,
        days_left=days,
        not_after=after.isoformat(),
    )


def check_key(cert: x509.Certificate, port: int) -> Check:
    """``cert.key``: the leaf's public key type and size, and its signature hash."""
    key = cert.public_key()
    signature = cert.signature_hash_algorithm
    if isinstance(signature, hashes.SHA1 | hashes.MD5):
        return failure(
            "cert.key",
            f"the certificate is signed with {signature.name.upper()}, which clients reject",
            "reissue the certificate with a SHA-256 signature",
            port,
        )
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            return failure(
                "cert.key",
                f"RSA {bits}-bit key: below {MIN_RSA_BITS} bits",
                "issue a new certificate with an RSA 2048+ or ECDSA P-256 key",
                port,
                type="RSA",
                bits=bits,
            )
        return ok("cert.key", f"RSA {bits}-bit key", port, type="RSA", bits=bits)
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = key.curve.name
        if curve in ("secp256r1", "secp384r1"):
            return ok("cert.key", f"ECDSA {curve} key", port, type="ECDSA", curve=curve)
        return warning(
            "cert.key",
            f"ECDSA key on {curve}: some clients support only P-256 and P-384",
            "issue the certificate with an ECDSA P-256 (or RSA 2048+) key",
            port,
            type="ECDSA",
            curve=curve,
        )
    if isinstance(key, dsa.DSAPublicKey):
        return failure(
            "cert.key",
            "DSA key: TLS clients no longer accept DSA certificates",
            "issue a new certificate with an ECDSA P-256 or RSA 2048+ key",
            port,
            type="DSA",
        )
    name = (
        "Ed25519"
        if isinstance(key, ed25519.Ed25519PublicKey)
        else ("Ed448" if isinstance(key, ed448.Ed448PublicKey) else type(key).__name__)
    )
    return warning(
        "cert.key",
        f"{name} key: few mail clients accept it",
        "serve an ECDSA P-256 or RSA 2048+ certificate (alone or beside this one)",
        port,
        type=name,
    )


def openssl_curve(cert: x509.Certificate) -> str | None:
    """The NIST name ("P-256") of an ECDSA leaf's curve, as ``openssl -groups`` takes it."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return None
    return {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name)
