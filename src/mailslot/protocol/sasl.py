"""SASL mechanisms as pure step functions (RFC 5034 POP3 AUTH, RFC 4422, RFC 4616 PLAIN).

A mechanism receives the client's decoded responses one at a time and answers with a
challenge to send, or with the credentials to verify.  No I/O, no base64 framing (that is the
connection's job, RFC 5034 section 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class SaslError(Exception):
    """The client's SASL message is malformed."""


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
