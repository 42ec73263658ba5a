"""Certificates made to order with ``cryptography``: any key type and size, any dates, any
names, chains in any order; written as PEM files the way an administrator would have them."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@dataclass
class Issued:
    cert: x509.Certificate
    key: Any  # a private key

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, password: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.NoEncryption()
            if password is None
            else serialization.BestAvailableEncryption(password)
        )
        return self.key.private_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @property
    def serial(self) -> int:
        return self.cert.serial_number


def new_key(kind: str = "ecdsa", bits: int = 2048) -> Any:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    return ec.generate_private_key(ec.SECP256R1())


def issue(
    name: str,
    issuer: Issued | None = None,
    *,
    names: tuple[str, ...] | None = None,
    ca: bool = False,
    kind: str = "ecdsa",
    bits: int = 2048,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    san: bool = True,
) -> Issued:
    """A certificate for ``name`` (its CN; SAN ``names``, default ``(name,)`` for a leaf),
    signed by ``issuer`` (self-signed if None); 30 days long by default."""
    key = new_key(kind, bits)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca and san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in (names or (name,))]),
            critical=False,
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Issued(cert, key)


@dataclass
class Pki:
    """A root (what clients trust) and an intermediate that issues leaves."""

    root: Issued
    intermediate: Issued
    ca_pem: Path

    def leaf(self, *names: str, **options: Any) -> Issued:
        return issue(names[0], self.intermediate, names=names, **options)

    def client(self, **versions: Any) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        for attribute, value in versions.items():
            setattr(context, attribute, value)
        return context


def pki(directory: Path, kind: str = "ecdsa") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    root = issue("mailslot test root", ca=True, kind=kind, not_after=NOW + 3650 * DAY)
    intermediate = issue("mailslot test intermediate", root, ca=True, kind=kind)
    ca_pem = directory / "root.pem"
    ca_pem.write_bytes(root.pem)
    return Pki(root, intermediate, ca_pem)


def write(
    directory: Path,
    leaf: Issued,
    *chain: Issued,
    stem: str = "",
    key: bytes | None = None,
) -> tuple[Path, Path]:
    """``fullchain.pem`` (``leaf`` then ``chain``) and ``privkey.pem`` (0600) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate = directory / f"{stem}fullchain.pem"
    certificate.write_bytes(leaf.pem + b"".join(c.pem for c in chain))
    private_key = directory / f"{stem}privkey.pem"
    private_key.write_bytes(key if key is not None else leaf.key_pem())
    private_key.chmod(0o600)
    return certificate, private_key
