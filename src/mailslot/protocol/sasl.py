"""SASL mechanisms as pure step functions (RFC 5034 POP3 AUTH, RFC 4422, RFC 4616 PLAIN).

A mechanism receives the client's decoded responses one at a time and answers with a
challenge to send, or with the credentials to verify.  No I/O; the connection frames the
responses (RFC 5034 section 4) and decodes them with :func:`decode_response`.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Protocol


class SaslError(Exception):
    """The client's SASL message is malformed."""


def decode_response(data: bytes) -> bytes:
    """Decode one base64 client response (RFC 5034 section 4, RFC 4648 section 4).

    Only the one canonical encoding of some octets is accepted: no characters outside the
    alphabet, no padding that is not needed (RFC 4648 section 3.3) and no pad bits set
    (section 3.5).  Anything else raises :class:`SaslError`, so that one response has one
    spelling and no smuggled bits.
    """
    try:
        decoded = binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as exc:
        raise SaslError("not base64") from exc
    if binascii.b2a_base64(decoded, newline=False) != data:
        raise SaslError("not the canonical base64 of its octets")
    return decoded


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a mechanism extracted: verify ``password`` for ``authcid`` acting as ``authzid``."""

    authcid: str
    password: str
    authzid: str | None


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send this (base64-encoded by the caller) as a ``+`` continuation."""

    data: bytes


class Mechanism(Protocol):
    """One SASL mechanism's server side."""

    name: str

    def step(self, response: bytes | None) -> Challenge | Credentials:
        """Process the next client response (``None``: no initial response was given)."""
        ...


class Plain:
    """PLAIN (RFC 4616 section 2): ``[authzid] NUL authcid NUL passwd``, all UTF-8."""

    name = "PLAIN"

    def step(self, response: bytes | None) -> Challenge | Credentials:
        if response is None:
            return Challenge(b"")
        parts = response.split(b"\x00")
        if len(parts) != 3:
            raise SaslError("PLAIN needs three NUL-separated fields")
        authzid, authcid, password = parts
        if not authcid or len(authcid) > 255 or len(password) > 255 or len(authzid) > 255:
            raise SaslError("bad PLAIN field lengths")
        try:
            return Credentials(
                authcid=authcid.decode("utf-8"),
                password=password.decode("utf-8"),
                authzid=authzid.decode("utf-8") or None,
            )
        except UnicodeDecodeError as exc:
            raise SaslError("PLAIN fields are UTF-8") from exc


MECHANISMS: dict[str, type[Plain]] = {"PLAIN": Plain}
