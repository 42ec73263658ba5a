"""Dovecot password schemes: ``{SCHEME}data`` strings, verified and made with libpass.

The stored form and scheme names follow Dovecot's "Password schemes" documentation
(https://doc.dovecot.org/configuration_manual/authentication/password_schemes/), so a
Dovecot passwd-file works unchanged and a hash made here is accepted by ``doveadm pw -t``.

Supported: ARGON2ID, ARGON2I, BLF-CRYPT (alias BCRYPT), SHA512-CRYPT, SHA256-CRYPT, SSHA,
SSHA256, SSHA512, SHA (alias SHA1), SHA256, SHA512, PLAIN / CLEARTEXT / CLEAR, and CRYPT or no
prefix at all for a modular crypt string (``$argon2id$``, ``$argon2i$``, ``$2y$``/``$2b$``/
``$2a$``, ``$6$``, ``$5$``).  Binary schemes take Dovecot's ``.HEX`` / ``.B64`` suffix, and, as
Dovecot does, a base64 scheme whose data has exactly twice the digest length is read as hex.

Legacy schemes (:data:`LEGACY_SCHEMES`: the MD5-based PLAIN-MD5, LDAP-MD5, SMD5, MD5-CRYPT
and its alias MD5, ``$1$`` under CRYPT, and DES ``CRYPT``, a 13-character crypt(3) string) are
refused unless named in ``legacy`` (``[auth] legacy_schemes``) or, for the MD5 ones,
``allow_md5=True``.  CRAM-MD5 and DIGEST-MD5 are never verifiable
here: the first stores MD5's internal state, which no library exposes, and the second needs
the SASL realm.  Every password scheme itself comes from libpass (import name ``passlib``);
nothing here implements a hash.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from passlib.hash import (
    argon2,
    bcrypt,
    des_crypt,
    hex_md5,
    hex_sha1,
    hex_sha256,
    hex_sha512,
    ldap_salted_md5,
    ldap_salted_sha1,
    ldap_salted_sha256,
    ldap_salted_sha512,
    md5_crypt,
    sha256_crypt,
    sha512_crypt,
)

__all__ = [
    "HASH_SCHEMES",
    "LEGACY_SCHEMES",
    "canonical_legacy",
    "hash_password",
    "identify",
    "is_plaintext",
    "is_slow",
    "scheme_name",
    "verify",
]

# crypt_blowfish (which Dovecot uses) reads at most 72 octets; bcrypt 5 raises instead of
# truncating, so truncate ourselves to accept what Dovecot accepts.
_BCRYPT_MAX_OCTETS = 72

# Dovecot's own argon2 defaults (m=64 MiB, t=3, p=1), so a hash made here costs on a Dovecot
# server what one made by ``doveadm pw`` costs.
_ARGON2_PARAMS = {"memory_cost": 65536, "rounds": 3, "parallelism": 1, "salt_size": 16}


@dataclass(frozen=True, slots=True)
class _Scheme:
    name: str
    check: Callable[[bytes, str], bool]  # (UTF-8 password, data after the prefix)
    slow: bool = False


def _argon2(password: bytes, data: str) -> bool:
    if not data.startswith(("$argon2id$", "$argon2i$")):
        return False
    return bool(argon2.verify(password, data))


def _bcrypt(password: bytes, data: str) -> bool:
    if not data.startswith(("$2y$", "$2b$", "$2a$")):
        return False
    return bool(bcrypt.verify(password[:_BCRYPT_MAX_OCTETS], data))


def _sha_crypt(prefix: str, handler: Any) -> Callable[[bytes, str], bool]:
    def check(password: bytes, data: str) -> bool:
        if not data.startswith(prefix):
            return False
        return bool(handler.verify(password, data))

    return check


def _md5_crypt(password: bytes, data: str) -> bool:
    if not data.startswith("$1$"):
        return False
    return bool(md5_crypt.verify(password, data))


def _des_crypt(password: bytes, data: str) -> bool:
    # Traditional crypt(3): two salt characters and eleven of hash, Dovecot's CRYPT default.
    if len(data) != 13 or data.startswith("$"):
        return False
    return bool(des_crypt.verify(password, data))


def _plain(password: bytes, data: str) -> bool:
    return hmac.compare_digest(password, data.encode("utf-8"))


def _decode_binary(data: str, encoding: str, default: str, fixed_size: int = 0) -> bytes | None:
    """Dovecot's binary-field decoding: explicit ``.HEX``/``.B64``, else the scheme's default.

    For a fixed-size digest, a default-base64 value exactly ``2 * fixed_size`` characters
    long is hex, as in Dovecot's ``password_decode()``: a digest of that size can never be that
    long in base64.  Salted schemes have no fixed size, so no guess.
    """
    chosen = encoding or default
    if not encoding and default == "B64" and fixed_size and len(data) == 2 * fixed_size:
        chosen = "HEX"
    try:
        if chosen == "HEX":
            return bytes.fromhex(data)
        return base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        return None


def _unsalted(size: int, hex_handler: Any, default: str) -> Callable[[bytes, str, str], bool]:
    def check(password: bytes, data: str, encoding: str) -> bool:
        raw = _decode_binary(data, encoding, default, size)
        if raw is None or len(raw) != size:
            return False
        return bool(hex_handler.verify(password, raw.hex()))

    return check


def _salted(size: int, ldap_handler: Any, ldap_prefix: str) -> Callable[[bytes, str, str], bool]:
    def check(password: bytes, data: str, encoding: str) -> bool:
        raw = _decode_binary(data, encoding, "B64")
        if raw is None or len(raw) <= size:
            return False
        # libpass's LDAP handlers parse the userPassword form (RFC 2307 syntax): digest, salt.
        ldap = ldap_prefix + base64.b64encode(raw).decode("ascii")
        return bool(ldap_handler.verify(password, ldap))

    return check


# Schemes whose data is a binary digest, so Dovecot's encoding suffix applies.
_BINARY: dict[str, tuple[Callable[[bytes, str, str], bool], bool]] = {
    "SHA": (_unsalted(20, hex_sha1, "B64"), False),
    "SHA1": (_unsalted(20, hex_sha1, "B64"), False),
    "SHA256": (_unsalted(32, hex_sha256, "B64"), False),
    "SHA512": (_unsalted(64, hex_sha512, "B64"), False),
    "SSHA": (_salted(20, ldap_salted_sha1, "{SSHA}"), False),
    "SSHA256": (_salted(32, ldap_salted_sha256, "{SSHA256}"), False),
    "SSHA512": (_salted(64, ldap_salted_sha512, "{SSHA512}"), False),
    "PLAIN-MD5": (_unsalted(16, hex_md5, "HEX"), True),
    "LDAP-MD5": (_unsalted(16, hex_md5, "B64"), True),
    "SMD5": (_salted(16, ldap_salted_md5, "{SMD5}"), True),
}

_TEXT: dict[str, _Scheme] = {
    s.name: s
    for s in (
        _Scheme("ARGON2ID", _argon2, slow=True),
        _Scheme("ARGON2I", _argon2, slow=True),
        _Scheme("BLF-CRYPT", _bcrypt, slow=True),
        _Scheme("BCRYPT", _bcrypt, slow=True),
        _Scheme("SHA512-CRYPT", _sha_crypt("$6$", sha512_crypt), slow=True),
        _Scheme("SHA256-CRYPT", _sha_crypt("$5$", sha256_crypt), slow=True),
        _Scheme("MD5-CRYPT", _md5_crypt, slow=True),
        _Scheme("MD5", _md5_crypt, slow=True),  # Dovecot's alias of MD5-CRYPT
        _Scheme("CRYPT", _des_crypt),
        _Scheme("PLAIN", _plain),
        _Scheme("CLEARTEXT", _plain),
        _Scheme("CLEAR", _plain),
    )
}

_PLAINTEXT = frozenset({"PLAIN", "CLEARTEXT", "CLEAR"})

#: Schemes verified only when ``[auth] legacy_schemes`` names them (canonical names).
LEGACY_SCHEMES = frozenset({"MD5-CRYPT", "PLAIN-MD5", "LDAP-MD5", "SMD5", "CRYPT"})
_LEGACY_ALIASES = {"MD5": "MD5-CRYPT", "DES-CRYPT": "CRYPT"}
_MD5_LEGACY = frozenset({"MD5-CRYPT", "PLAIN-MD5", "LDAP-MD5", "SMD5"})


def canonical_legacy(name: str) -> str | None:
    """The :data:`LEGACY_SCHEMES` member ``name`` (any case, or an alias) stands for."""
    upper = name.upper()
    upper = _LEGACY_ALIASES.get(upper, upper)
    return upper if upper in LEGACY_SCHEMES else None


# Modular crypt prefixes recognised under {CRYPT} or with no prefix, longest first.
_MODULAR: tuple[tuple[str, str], ...] = (
    ("$argon2id$", "ARGON2ID"),
    ("$argon2i$", "ARGON2I"),
    ("$2y$", "BLF-CRYPT"),
    ("$2b$", "BLF-CRYPT"),
    ("$2a$", "BLF-CRYPT"),
    ("$6$", "SHA512-CRYPT"),
    ("$5$", "SHA256-CRYPT"),
    ("$1$", "MD5-CRYPT"),
)


def _split(stored: str) -> tuple[str, str, str]:
    """Return (SCHEME, encoding suffix or "", data); a bare value is a crypt(3) string."""
    scheme, encoding, data = "CRYPT", "", stored
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            scheme, data = stored[1:end].upper(), stored[end + 1 :]
            base, dot, suffix = scheme.partition(".")
            if dot:
                scheme = base
                encoding = {"HEX": "HEX", "B64": "B64", "BASE64": "B64"}.get(suffix, "?")
    if scheme == "CRYPT":
        for prefix, name in _MODULAR:
            if data.startswith(prefix):
                return name, encoding, data
    return scheme, encoding, data


def scheme_name(stored: str) -> str | None:
    """The canonical scheme of ``stored`` whether or not it is allowed (for log lines), or
    ``None`` for an unknown one.  MD5 is named MD5-CRYPT, as the setting spells it."""
    scheme, encoding, _ = _split(stored)
    if encoding == "?":
        return None
    if scheme in _BINARY:
        return scheme
    found = _TEXT.get(scheme)
    if found is None or encoding:
        return None
    return _LEGACY_ALIASES.get(found.name, found.name)


def identify(stored: str, *, allow_md5: bool = False, legacy: Collection[str] = ()) -> str | None:
    """The canonical scheme name :func:`verify` would use for ``stored``, or ``None``.

    ``None`` means verify() can never succeed: unknown, refused or unverifiable scheme.
    A legacy scheme is allowed when ``legacy`` names it (canonical names, see
    :func:`canonical_legacy`) or, for an MD5 one, with ``allow_md5``.
    The data itself is not parsed; a malformed hash of a known scheme is still named.
    """
    name = scheme_name(stored)
    if name is None:
        return None
    refused = name in LEGACY_SCHEMES and name not in legacy
    return None if refused and not (allow_md5 and name in _MD5_LEGACY) else name


def is_plaintext(stored: str) -> bool:
    """Whether ``stored`` keeps the password itself (PLAIN, CLEARTEXT, CLEAR)."""
    return identify(stored) in _PLAINTEXT


def is_slow(stored: str) -> bool:
    """Whether verifying ``stored`` is deliberately costly, so belongs off the event loop."""
    scheme, _, _ = _split(stored)
    found = _TEXT.get(scheme)
    return found is not None and found.slow


def verify(
    password: str, stored: str, *, allow_md5: bool = False, legacy: Collection[str] = ()
) -> bool:
    """Whether ``password`` matches ``stored``; False, never an exception, for a bad hash.

    A caller that needs to tell a malformed or refused hash from a wrong password asks
    :func:`identify` (at load time, not per attempt).
    """
    name = identify(stored, allow_md5=allow_md5, legacy=legacy)
    if name is None:
        return False
    _, encoding, data = _split(stored)
    try:
        secret = password.encode("utf-8")
        if name in _BINARY:
            return _BINARY[name][0](secret, data, encoding)
        return _TEXT[name].check(secret, data)
    except Exception:
        # libpass raises ValueError/TypeError subclasses and argon2-cffi its own errors for
        # malformed hashes or unacceptable secrets (NUL in bcrypt); none is a match.
        return False


HASH_SCHEMES = (
    "ARGON2ID",
    "ARGON2I",
    "BLF-CRYPT",
    "SHA512-CRYPT",
    "SHA256-CRYPT",
    "SSHA",
    "SSHA256",
    "SSHA512",
)


def hash_password(password: str, scheme: str = "ARGON2ID") -> str:
    """Hash ``password`` as Dovecot would store it: ``{SCHEME}data``.

    Only salted, deliberately slow or salted-digest schemes are offered (plaintext and
    unsalted digests are accepted by :func:`verify` for existing files but never written).
    ``BCRYPT`` is written as ``{BLF-CRYPT}``, the name Dovecot knows.  Raises ValueError for
    any other scheme, or a password longer than bcrypt's 72 octets.
    """
    name = scheme.upper()
    secret = password.encode("utf-8")
    if name == "ARGON2ID":
        data = argon2.using(type="ID", **_ARGON2_PARAMS).hash(secret)
    elif name == "ARGON2I":
        data = argon2.using(type="I", **_ARGON2_PARAMS).hash(secret)
    elif name in ("BLF-CRYPT", "BCRYPT"):
        if len(secret) > _BCRYPT_MAX_OCTETS:
            raise ValueError("bcrypt uses only the first 72 octets of a password")
        name, data = "BLF-CRYPT", bcrypt.using(ident="2y").hash(secret)
    elif name == "SHA512-CRYPT":
        data = sha512_crypt.hash(secret)
    elif name == "SHA256-CRYPT":
        data = sha256_crypt.hash(secret)
    elif name in ("SSHA", "SSHA256", "SSHA512"):
        handler = {"SSHA": ldap_salted_sha1, "SSHA256": ldap_salted_sha256}.get(
            name, ldap_salted_sha512
        )
        # libpass already writes the LDAP "{SSHA}base64" form Dovecot reads.
        return str(handler.using(salt_size=8).hash(secret))
    else:
        raise ValueError(f"cannot write passwords with scheme {scheme!r}")
    return f"{{{name}}}{data}"
