"""Certificate and key files read as the server reads them, and everything wrong with them.

``check-config``, ``serve`` (before it starts) and every reload (SIGHUP or a changed file)
run the same checks, so a file that passes ``check-config`` loads, and one that would not
load stops ``serve`` with a message that names it.  Each :class:`Finding` is an error (the
file cannot be served: ``check-config`` and ``serve`` exit 78, a reload keeps the old
certificate) or a warning (it can be served, but some clients or scanners will object):

- **parsing**: the certificate file holds PEM ``CERTIFICATE`` blocks that parse (not DER, not
  a key, not empty); the key file holds one unencrypted PEM private key (not a certificate,
  not encrypted: an unattended server cannot ask for a passphrase);
- **key match**: the key is the first certificate's (OpenSSL serves the first certificate of
  the file as the server's own);
- **chain order**: each certificate is issued by the next one (RFC 8446 section 4.4.2; RFC
  5246 section 7.4.2 requires it outright for TLS 1.2);
- **missing intermediates** (warning): the last certificate of the file is not self-signed
  and its issuer is not in this host's trust store.  This host's store is not the clients',
  so this is a hint, not a verdict: a private CA the clients trust is fine;
- **validity**: expired or not yet valid is an error, less than 21 days left a warning;
- **names** (warning): ``[server] hostname`` is among the subjectAltName DNS names of some
  certificate (RFC 9525 section 6.3: no Common Name fallback; a wildcard only as the whole
  left-most label, matching one label);
- **key type** (Mozilla Server Side TLS v5.7): RSA keys under 2048 bits and DSA keys are
  errors, keys other than RSA, ECDSA P-256 and P-384 warnings, and a lifetime of 366 days
  or more (``intermediate``) or 90 days or more (``modern``) a warning;
- **key file access** (:func:`access_findings`, start-up only): a key every account may read
  is an error, a group-readable key that the reloading process does not need the group for a
  warning, and a file that the reloading process cannot read a warning (the reload would fail).
"""

from __future__ import annotations

import datetime as dt
import functools
import grp
import ipaddress
import itertools
import os
import re
import ssl
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

if TYPE_CHECKING:
    from mailslot.config import Config

Severity = Literal["error", "warning"]
KeyKind = Literal["ecdsa", "rsa", "other"]

EXPIRY_WARNING = dt.timedelta(days=21)
# Mozilla Server Side TLS v5.7 "certificate_lifespan", in days.
MAX_LIFETIME = {"intermediate": 366, "modern": 90}
MIN_RSA_BITS = 2048
# The profiles' ECDSA curves (as cryptography names them) and the names admins know.
PROFILE_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"DSA PRIVATE KEY"}


@dataclass(frozen=True, slots=True)
class KeyPair:
    """One certificate chain file and its key file, and where the configuration names them:
    ``key`` is ``"tls"`` or ``"tls.certificates[N]"``."""

    key: str
    certificate: Path
    private_key: Path


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong with a file: ``key`` is the dotted configuration key naming it (e.g.
    ``tls.private_key``), ``message`` names the file and says how to fix it."""

    severity: Severity
    key: str
    message: str


@dataclass(frozen=True, slots=True)
class Loaded:
    """A pair that parsed: its chain (leaf first), the DNS names it serves, its key type."""

    pair: KeyPair
    chain: tuple[x509.Certificate, ...]
    names: tuple[str, ...]  # subjectAltName dNSNames, lower case, as presented (wildcards too)
    kind: KeyKind
    description: str  # "ECDSA P-256", "RSA 2048"


class CertificateError(ssl.SSLError):
    """A certificate or key cannot be served; :attr:`findings` says why (errors first)."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = list(findings)
        super().__init__(
            "; ".join(f.message for f in self.findings if f.severity == "error")
            or "; ".join(f.message for f in self.findings)
        )

    def __str__(self) -> str:  # ssl.SSLError's would print the args tuple
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class _Block:
    label: bytes
    line: int
    pem: bytes


def _blocks(data: bytes) -> list[_Block]:
    return [
        _Block(m[1], data.count(b"\n", 0, m.start()) + 1, m[0]) for m in _PEM_BLOCK.finditer(data)
    ]


def _subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        return f'"{names[0].value!s}"'
    return f'"{cert.subject.rfc4514_string()}"'


def _date(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _unfinished(path: Path, key: str, data: bytes, blocks: list[_Block]) -> Finding | None:
    """A ``-----BEGIN`` line with no ``-----END``: a file cut short, or still being written
    (a renewal caught half way), which would otherwise parse as a shorter chain."""
    starts = [m.start() for m in re.finditer(rb"-----BEGIN [A-Z0-9 ]+-----", data)]
    if len(starts) <= len(blocks):
        return None
    ends = {b.line for b in blocks}
    line = next(
        (n for n in (data.count(b"\n", 0, s) + 1 for s in starts) if n not in ends),
        data.count(b"\n", 0, starts[-1]) + 1,
    )
    return Finding(
        "error",
        key,
        f"{path}:{line}: the file does not parse: the PEM block that starts there has no "
        "-----END line (the file is cut short, or was still being written); install it whole",
    )


def _read(path: Path, key: str, what: str) -> bytes | Finding:
    try:
        return path.read_bytes()
    except OSError as exc:
        return Finding(
            "error", key, f"{path}: cannot read the {what}: {exc.strerror or exc}; check the path"
        )


def _not_pem(path: Path, key: str, data: bytes, kind: str, convert: str) -> Finding:
    if not data.strip():
        return Finding("error", key, f"{path} is empty; it should hold the {kind} in PEM")
    if data[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER
        return Finding(
            "error",
            key,
            f"{path} is DER, not PEM; convert it: {convert} -inform der -in {path} -out "
            f"{path}.pem, and name the .pem file",
        )
    return Finding(
        "error",
        key,
        f"{path} is not a PEM file (no -----BEGIN line); it should hold the {kind}",
    )


def _load_chain(pair: KeyPair) -> tuple[list[x509.Certificate], list[Finding]]:
    key = f"{pair.key}.certificate"
    path = pair.certificate
    data = _read(path, key, "certificate chain")
    if isinstance(data, Finding):
        return [], [data]
    blocks = _blocks(data)
    certs = [b for b in blocks if b.label == b"CERTIFICATE"]
    findings: list[Finding] = []
    if (cut := _unfinished(path, key, data, blocks)) is not None:
        return [], [cut]
    if not blocks:
        return [], [_not_pem(path, key, data, "certificate chain", "openssl x509")]
    if not certs:
        labels = {b.label for b in blocks}
        if labels & _KEY_LABELS or b"ENCRYPTED PRIVATE KEY" in labels:
            message = (
                f"{path} holds a private key, not a certificate: are certificate and "
                "private_key swapped? certificate names the chain (certbot: fullchain.pem)"
            )
        else:
            message = (
                f"{path} holds {blocks[0].label.decode()}, not a certificate; name the "
                "certificate chain in PEM (certbot: fullchain.pem)"
            )
        return [], [Finding("error", key, message)]
    chain: list[x509.Certificate] = []
    for number, block in enumerate(certs, start=1):
        try:
            chain.append(x509.load_pem_x509_certificate(block.pem))
        except ValueError as exc:
            findings.append(
                Finding(
                    "error",
                    key,
                    f"{path}:{block.line}: certificate {number} of the file does not parse "
                    f"({exc}); replace the file with the chain your CA issued",
                )
            )
    if any(b.label in _KEY_LABELS for b in blocks):
        findings.append(
            Finding(
                "warning",
                key,
                f"{path} also holds a private key, which is read from private_key only; keep "
                "the key out of the certificate file (it is often readable by everyone)",
            )
        )
    return ([] if findings and any(f.severity == "error" for f in findings) else chain), findings


def _load_key(pair: KeyPair) -> tuple[object | None, list[Finding]]:
    key = f"{pair.key}.private_key"
    path = pair.private_key
    data = _read(path, key, "private key")
    if isinstance(data, Finding):
        return None, [data]
    blocks = _blocks(data)
    if (cut := _unfinished(path, key, data, blocks)) is not None:
        return None, [cut]
    if not blocks:
        return None, [_not_pem(path, key, data, "private key", "openssl pkey")]
    if any(
        b.label == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in b.pem for b in blocks
    ):
        return None, [
            Finding(
                "error",
                key,
                f"{path} is encrypted; mailslot starts unattended and cannot ask for a "
                f"passphrase: write it unencrypted (openssl pkey -in {path} -out NEW; then "
                "chmod 0600 NEW) and name that file",
            )
        ]
    keys = [b for b in blocks if b.label in _KEY_LABELS]
    if not keys:
        if any(b.label == b"CERTIFICATE" for b in blocks):
            message = (
                f"{path} holds a certificate, not a private key; private_key names the key "
                "file (certbot: privkey.pem)"
            )
        else:
            message = f"{path} holds {blocks[0].label.decode()}, not a private key"
        return None, [Finding("error", key, message)]
    try:
        private = serialization.load_pem_private_key(keys[0].pem, password=None)
    except (ValueError, TypeError) as exc:
        return None, [
            Finding(
                "error",
                key,
                f"{path}:{keys[0].line}: the private key does not parse ({exc}); replace it "
                "with the key the certificate was issued for",
            )
        ]
    return private, []


def _spki(public: object) -> bytes:
    return public.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_type(public: object) -> tuple[KeyKind, str]:
    if isinstance(public, rsa.RSAPublicKey):
        return "rsa", f"RSA {public.key_size}"
    if isinstance(public, ec.EllipticCurvePublicKey):
        name = public.curve.name
        return "ecdsa", f"ECDSA {PROFILE_CURVES.get(name, name)}"
    if isinstance(public, dsa.DSAPublicKey):
        return "other", f"DSA {public.key_size}"
    return "other", type(public).__name__.removeprefix("_").replace("PublicKey", "")


def dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The subjectAltName DNS names of ``cert``, lower case, without a trailing dot."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return ()
    value: x509.SubjectAlternativeName = san.value  # type: ignore[assignment]
    return tuple(name.lower().rstrip(".") for name in value.get_values_for_type(x509.DNSName))


def _ip_addresses(cert: x509.Certificate) -> list[object]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return []
    value: x509.SubjectAlternativeName = san.value  # type: ignore[assignment]
    return list(value.get_values_for_type(x509.IPAddress))


def name_matches(pattern: str, hostname: str) -> bool:
    """Whether the presented DNS name ``pattern`` matches ``hostname`` (RFC 9525 section
    6.3): equal ignoring case, or ``*.rest`` where the whole left-most label is ``*`` and
    stands for exactly one non-empty label of ``hostname``.  Partial wildcards (``w*``) and
    wildcards elsewhere never match."""
    pattern = pattern.lower().rstrip(".")
    hostname = hostname.lower().rstrip(".")
    if pattern == hostname:
        return True
    if not pattern.startswith("*.") or "*" in pattern[1:]:
        return False
    label, dot, rest = hostname.partition(".")
    return bool(label and dot) and rest == pattern[2:]


def _trusted_issuers(
    trusted: Sequence[Path] = (),
) -> dict[x509.Name, list[x509.Certificate]] | None:
    """This host's trust store (OpenSSL's default file and directory, which honour
    ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``) and the ``trusted`` files, by subject; ``None``
    if none can be read.  Parsed once per version of its files (some 150 roots take 50-150
    ms to parse; a reload of many certificates asks once per certificate)."""
    paths = ssl.get_default_verify_paths()
    files: list[Path] = list(trusted)
    if paths.cafile and os.path.isfile(paths.cafile):
        files.append(Path(paths.cafile))
    if paths.capath and os.path.isdir(paths.capath):
        files.extend(p for p in Path(paths.capath).iterdir() if p.name.endswith((".0", ".pem")))
    versions: list[tuple[str, int]] = []
    for file in files:
        try:
            versions.append((str(file), file.stat().st_mtime_ns))
        except OSError:
            continue
    return _load_store(tuple(versions))


@functools.lru_cache(maxsize=4)
def _load_store(
    files: tuple[tuple[str, int], ...],
) -> dict[x509.Name, list[x509.Certificate]] | None:
    store: dict[x509.Name, list[x509.Certificate]] = {}
    found = False
    for name, _version in files:
        try:
            with warnings.catch_warnings():  # a store's old roots with negative serials
                warnings.simplefilter("ignore")
                certs = x509.load_pem_x509_certificates(Path(name).read_bytes())
        except (OSError, ValueError):
            continue
        found = True
        for cert in certs:
            store.setdefault(cert.subject, []).append(cert)
    return store if found else None


def _chain_findings(
    pair: KeyPair, chain: list[x509.Certificate], trusted: Sequence[Path] = ()
) -> list[Finding]:
    key = f"{pair.key}.certificate"
    path = pair.certificate
    findings: list[Finding] = []
    for number, (child, parent) in enumerate(itertools.pairwise(chain), start=1):
        if not _issued_by(child, parent):
            findings.append(
                Finding(
                    "error",
                    key,
                    f"{path}: certificate {number + 1} ({_subject(parent)}) did not issue "
                    f"certificate {number} ({_subject(child)}, issued by "
                    f'"{child.issuer.rfc4514_string()}"): the file must hold the server\'s '
                    "certificate first, then each issuer in turn (certbot: fullchain.pem)",
                )
            )
    if findings:
        return findings
    last = chain[-1]
    if last.issuer == last.subject and _issued_by(last, last):
        if len(chain) == 1:
            findings.append(
                Finding(
                    "warning",
                    key,
                    f"{path}: the certificate is self-signed: only clients that were given it "
                    "trust it; use a certificate from a CA for public clients",
                )
            )
        return findings
    store = _trusted_issuers(trusted)
    issuer = last.issuer.rfc4514_string()
    if store is None:
        findings.append(
            Finding(
                "warning",
                key,
                f"{path}: cannot tell whether the chain is complete (no trust store on this "
                f'host): the last certificate is issued by "{issuer}"; if that is an '
                "intermediate CA, append it to the file",
            )
        )
    elif not any(_issued_by(last, ca) for ca in store.get(last.issuer, [])):
        findings.append(
            Finding(
                "warning",
                key,
                f'{path}: the last certificate ({_subject(last)}) is issued by "{issuer}", '
                "which is neither in the file nor in this host's trust store: clients that "
                "do not already hold that CA cannot build the chain.  If it is an "
                "intermediate, append it (certbot: fullchain.pem, not cert.pem); if it is a "
                "private root your clients were given, this is fine (this host's store is not "
                "theirs)",
            )
        )
    return findings


def _validity_findings(
    pair: KeyPair, chain: list[x509.Certificate], now: dt.datetime, profile: str
) -> list[Finding]:
    key = f"{pair.key}.certificate"
    path = pair.certificate
    findings: list[Finding] = []
    for number, cert in enumerate(chain, start=1):
        which = "the certificate" if number == 1 else f"certificate {number} ({_subject(cert)})"
        after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
        if now < before:
            findings.append(
                Finding(
                    "error",
                    key,
                    f"{path}: {which} is not valid before {_date(before)} (this host's clock "
                    f"says {_date(now)}): check the clock, or install it once it is valid",
                )
            )
        elif now >= after:
            findings.append(
                Finding(
                    "error",
                    key,
                    f"{path}: {which} expired on {_date(after)}: renew it (certbot renew) "
                    "and install the new chain",
                )
            )
        elif after - now < EXPIRY_WARNING:
            days = (after - now).days
            findings.append(
                Finding(
                    "warning",
                    key,
                    f"{path}: {which} expires on {_date(after)}, in {days} day"
                    f"{'' if days == 1 else 's'}: renew it (certbot renew)",
                )
            )
    leaf = chain[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    limit = MAX_LIFETIME.get(profile)
    if limit is not None and lifetime >= dt.timedelta(days=limit):
        findings.append(
            Finding(
                "warning",
                key,
                f"{path}: the certificate is valid for {lifetime.days} days; Mozilla's "
                f'"{profile}" profile wants less than {limit} ([tls] profile), so TLS '
                "scanners will flag it: issue one with a shorter lifetime (public CAs do)",
            )
        )
    return findings


def _key_type_findings(pair: KeyPair, public: object) -> list[Finding]:
    key = f"{pair.key}.certificate"
    path = pair.certificate
    _kind, description = _key_type(public)
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        return [
            Finding(
                "error",
                key,
                f"{path}: the certificate's key is {description} bits; at least "
                f"{MIN_RSA_BITS} are needed (OpenSSL's default security level and "
                "Mozilla's profiles): issue a new certificate with an RSA 2048 or ECDSA "
                "P-256 key",
            )
        ]
    if isinstance(public, dsa.DSAPublicKey):
        return [
            Finding(
                "error",
                key,
                f"{path}: the certificate's key is DSA, which no cipher suite of the profile "
                "can use: issue a new certificate with an ECDSA P-256 or RSA 2048 key",
            )
        ]
    if isinstance(public, rsa.RSAPublicKey) or (
        isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in PROFILE_CURVES
    ):
        return []
    return [
        Finding(
            "warning",
            key,
            f"{path}: the certificate's key is {description}, which Mozilla's profiles do "
            "not list and some clients cannot use: prefer ECDSA P-256 or P-384, or RSA 2048",
        )
    ]


def load_pair(
    pair: KeyPair,
    *,
    profile: str = "intermediate",
    now: dt.datetime | None = None,
    trusted: Sequence[Path] = (),
) -> tuple[Loaded | None, list[Finding]]:
    """Read and check one pair; :class:`Loaded` unless a finding is an error.  ``trusted``:
    CA files to count as trusted beside this host's store (the quick start's own CA)."""
    now = now if now is not None else dt.datetime.now(dt.UTC)
    chain, findings = _load_chain(pair)
    private, key_findings = _load_key(pair)
    findings += key_findings
    if not chain or private is None:
        return None, findings
    leaf = chain[0]
    public = private.public_key()  # type: ignore[attr-defined]
    if _spki(leaf.public_key()) != _spki(public):
        matching = [
            n for n, c in enumerate(chain, start=1) if _spki(c.public_key()) == _spki(public)
        ]
        if matching:
            message = (
                f"{pair.certificate}: the key in {pair.private_key} belongs to certificate "
                f"{matching[0]} of the file, not to the first: put the server's certificate "
                "first, then its issuers"
            )
        else:
            message = (
                f"the key in {pair.private_key} does not belong to the certificate in "
                f"{pair.certificate} ({_subject(leaf)}): name the key the certificate was "
                "issued for (certbot: privkey.pem from the same live/ directory)"
            )
        findings.append(Finding("error", f"{pair.key}.private_key", message))
        return None, findings
    findings += _chain_findings(pair, chain, trusted)
    findings += _validity_findings(pair, chain, now, profile)
    findings += _key_type_findings(pair, public)
    names = dns_names(leaf)
    if not names and not _ip_addresses(leaf):
        findings.append(
            Finding(
                "warning",
                f"{pair.key}.certificate",
                f"{pair.certificate}: the certificate has no subjectAltName DNS names; clients "
                "ignore the Common Name (RFC 9525 section 6.3) and will refuse it: issue one "
                "with the server's names as subjectAltNames",
            )
        )
    if any(f.severity == "error" for f in findings):
        return None, findings
    kind, description = _key_type(public)
    return Loaded(pair, tuple(chain), names, kind, description), findings


def load_pairs(
    pairs: Sequence[KeyPair],
    *,
    profile: str = "intermediate",
    hostname: str | None = None,
    now: dt.datetime | None = None,
    trusted: Sequence[Path] = (),
) -> tuple[list[Loaded], list[Finding]]:
    """Check every pair, then ``hostname`` against all of them together."""
    loaded: list[Loaded] = []
    findings: list[Finding] = []
    for pair in pairs:
        result, found = load_pair(pair, profile=profile, now=now, trusted=trusted)
        findings += found
        if result is not None:
            loaded.append(result)
    if hostname and loaded and len(loaded) == len(pairs):
        findings += _hostname_findings(loaded, hostname)
    return loaded, findings


def _hostname_findings(loaded: list[Loaded], hostname: str) -> list[Finding]:
    try:
        address: object = ipaddress.ip_address(hostname)
    except ValueError:
        address = None
    for item in loaded:
        if address is not None and address in _ip_addresses(item.chain[0]):
            return []
        if address is None and any(name_matches(name, hostname) for name in item.names):
            return []
    first = loaded[0]
    shown = ", ".join(first.names) or "none"
    several = " (nor does any of [[tls.certificates]])" if len(loaded) > 1 else ""
    return [
        Finding(
            "warning",
            f"{first.pair.key}.certificate",
            f'{first.pair.certificate} does not name [server] hostname "{hostname}"{several}: '
            f"its DNS names are {shown}; clients that connect to {hostname} will refuse it.  "
            "Issue a certificate for that name, or set hostname to the name clients use",
        )
    ]


# -- file access ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reloader:
    """Who reads the files again on a reload: ``uid``/``gid``, and how to say so."""

    uid: int
    gid: int
    who: str  # "root (the parent of the workers)", "mailslot:mailslot"
    group: str  # the group to give read access to, when the reloader is not the owner


def _reachable(path: Path) -> tuple[bool, bool]:
    """Whether every directory above ``path`` lets others, and the group or others, through."""
    others = group = True
    for directory in path.resolve().parents:
        try:
            mode = directory.stat().st_mode
        except OSError:
            return False, False
        others = others and bool(mode & stat.S_IXOTH)
        group = group and bool(mode & (stat.S_IXGRP | stat.S_IXOTH))
    return others, group


def access_findings(
    pair: KeyPair, reloader: Reloader, unreadable: Sequence[Path] = ()
) -> list[Finding]:
    """The key's mode against who reads it, and ``unreadable``: the files of ``pair`` the
    reloading process cannot read (asked by the caller, as that process)."""
    findings: list[Finding] = []
    key = f"{pair.key}.private_key"
    path = pair.private_key
    try:
        info = path.stat()
    except OSError:
        return findings  # said by the loading checks
    mode = stat.S_IMODE(info.st_mode)
    # A mode bit matters only if the directories on the way let that class through (certbot's
    # live/ and archive/ are 0700 root): a 0644 key in a 0700 directory is safe.
    others, group = _reachable(path)
    if mode & 0o004 and others:
        findings.append(
            Finding(
                "error",
                key,
                f"{path} can be read by every account on this host (mode {mode:04o}): "
                f"whoever reads it can impersonate this server; chmod o-rwx {path} (and get "
                "a new certificate and key if it has been exposed)",
            )
        )
    elif mode & 0o040 and group and (reloader.uid == 0 or reloader.uid == info.st_uid):
        findings.append(
            Finding(
                "warning",
                key,
                f"{path} can be read by its group (mode {mode:04o}), which mailslot does not "
                f"need: {reloader.who} reads it as its owner or root; chmod 0600 {path}",
            )
        )
    for unread in unreadable:
        which = "private_key" if unread == pair.private_key else "certificate"
        findings.append(
            Finding(
                "warning",
                f"{pair.key}.{which}",
                f"{unread} is not readable by {reloader.who}: a SIGHUP reload will fail; "
                f"make it readable by the group (chgrp {reloader.group} {unread}; chmod 0640 "
                f"{unread}, and the directories on the way traversable), or set workers = 2 for a "
                "parent that reloads as root",
            )
        )
    return findings


# -- the whole configuration ------------------------------------------------------------------


def check_config(
    config: Config, now: dt.datetime | None = None, trusted: Sequence[Path] = ()
) -> list[Finding]:
    """Every finding for ``config``'s certificates, as ``check-config`` and ``serve`` report
    them: the loading checks, the contexts built as the server builds them (OpenSSL may
    refuse what passed: a weak signature, say), and the key files' access.  ``trusted``: CA
    files the clients are known to hold (the quick start's)."""
    from mailslot.tls.context import contexts_for, key_pairs

    pairs = key_pairs(config.tls)
    if not pairs:
        return []
    loaded, findings = load_pairs(
        pairs,
        profile=config.tls.profile,
        hostname=config.server.hostname,
        now=now,
        trusted=trusted,
    )
    if len(loaded) == len(pairs) and not any(f.severity == "error" for f in findings):
        try:
            contexts_for(config.tls)
        except (OSError, ssl.SSLError) as exc:
            findings.append(
                Finding(
                    "error",
                    "tls.certificate",
                    f"OpenSSL refuses the certificates: {exc}; see the files above",
                )
            )
    reloader, ask = _reloader(config)
    unusable = {f.key for f in findings if f.severity == "error"}
    for pair in pairs:
        if f"{pair.key}.private_key" in unusable:
            continue  # not a key: its mode is beside the point
        unreadable = ask([pair.certificate, pair.private_key])
        findings += access_findings(pair, reloader, unreadable)
    return findings


def _reloader(config: Config) -> tuple[Reloader, Callable[[list[Path]], list[Path]]]:
    """Who reads the files on a reload, and how to ask which of them it cannot read.

    With ``workers`` > 1 the parent does, as whoever starts mailslot (root keeps root); a
    lone worker started as root reads them as ``[server] user`` (:mod:`mailslot.privileges`:
    only root can ask for that account, through a child that becomes it)."""
    from mailslot import privileges

    euid, egid = os.geteuid(), os.getegid()
    identity = None
    if config.server.workers == 1 and euid == 0:
        try:
            identity = privileges.target(config.server)
        except privileges.PrivilegeError:
            identity = None  # reported by the identity checks
    if identity is not None:
        found = identity
        name = f"{identity.user}:{identity.group}"
        return (
            Reloader(identity.uid, identity.gid, name, identity.group),
            lambda paths: privileges.unreadable(found, paths),
        )
    who = "root" if euid == 0 else f"uid {euid}"
    if config.server.workers > 1:
        who += " (the parent of the workers)"
    try:
        group = grp.getgrgid(egid).gr_name
    except KeyError:
        group = str(egid)
    return (
        Reloader(euid, egid, who, group),
        lambda paths: [p for p in paths if p.exists() and not os.access(p, os.R_OK)],
    )
