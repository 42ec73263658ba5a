"""User names: the one check before a name reaches a path, a query or a log line.

RFC 1939 section 7 leaves the USER argument's syntax to the server; RFC 6856 (POP3 support
for UTF-8) lets a server accept UTF-8 user names once ``UTF8`` is in effect.  A name is
untrusted client input that later expands into Maildir path templates (``/var/mail/{user}``),
so the rules here are deliberately narrower than any mail system needs: 1 to 255 UTF-8
octets, Unicode NFC, no control, format, surrogate, private-use, unassigned or whitespace
characters, none of ``/ \\ :``, no leading ``.`` and no ``..`` anywhere.

Names that are not NFC are refused rather than normalised: normalising would let two different
byte strings log in as the same user, and an account created under one spelling must not be
reachable under another.
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_OCTETS", "InvalidUsername", "for_log", "is_valid", "validate"]

MAX_OCTETS = 255

_FORBIDDEN_CHARS = frozenset("/\\:")
# Cc covers C0, DEL and C1; Cf holds invisible format characters (bidi overrides, zero-width
# joiners) that make two names look alike in logs; Cs, Co and Cn have no place in an identifier.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


class InvalidUsername(ValueError):
    """The name breaks one of the rules in this module's docstring."""


def validate(name: str) -> str:
    """Return ``name`` unchanged if it is an acceptable user name, else raise InvalidUsername.

    The exception message never contains the name itself, so it is safe to log.
    """
    if not isinstance(name, str):
        raise InvalidUsername("user name is not a string")
    try:
        octets = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUsername("user name is not valid UTF-8") from None
    if not 1 <= len(octets) <= MAX_OCTETS:
        raise InvalidUsername(f"user name must be 1 to {MAX_OCTETS} octets")
    for char in name:
        if char in _FORBIDDEN_CHARS:
            raise InvalidUsername("user name contains a path or field separator")
        if char.isspace() or unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise InvalidUsername("user name contains a control or whitespace character")
    if name.startswith("."):
        raise InvalidUsername("user name starts with '.'")
    if ".." in name:
        raise InvalidUsername("user name contains '..'")
    if not unicodedata.is_normalized("NFC", name):
        raise InvalidUsername("user name is not in Unicode NFC")
    return name


def is_valid(name: str) -> bool:
    """Whether :func:`validate` accepts ``name``."""
    try:
        validate(name)
    except InvalidUsername:
        return False
    return True


def for_log(name: str, limit: int = 128) -> str:
    """Render any string (valid name or not) as one printable log token.

    Backslashes, whitespace and every non-printable character are escaped Python-style, so
    the result holds no CR, LF or terminal escape and maps back to one input; longer input is
    cut to ``limit`` characters and marked with a trailing ``...``.
    """
    out: list[str] = []
    for char in name[:limit]:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable() and not char.isspace():
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    if len(name) > limit:
        out.append("...")
    return "".join(out)
