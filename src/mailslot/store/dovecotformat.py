"""Dovecot's ``pop3_uidl_format``: the template its POP3 server builds unique-ids from.

RFC 1939 section 7 leaves the unique-id to the server; a site taken over from Dovecot keeps
its clients' leave-on-server state only if every unique-id stays byte for byte the same.
Dovecot 2.3 expands the format with its ``var_expand`` rules (doc.dovecot.org, "Variables"):
``%[-][0]<width>[.[0][-]<width>][<modifiers>]<variable>``, where

* ``%u`` / ``%{uid}`` is the message's IMAP UID, ``%v`` / ``%{uidvalidity}`` the mailbox's
  UIDVALIDITY (both decimal, from ``dovecot-uidlist``), ``%f`` / ``%{filename}`` the Maildir
  base name, ``%g`` / ``%{guid}`` the ``G`` field of the uidlist record or else the base name;
  ``%m`` (a header MD5) is not available for Maildir in Dovecot either, and is refused;
* modifiers run left to right: ``L``/``U`` (ASCII case), ``X`` (the decimal value as lower-case
  hex, 0 if it is not a number), ``R`` (reverse), ``T`` (trim trailing white space), ``E``
  (backslash before ``\\``, ``"`` and ``'``) and ``M`` (MD5, hex);
* an offset before a ``.`` skips that many characters (a negative one keeps as many from the
  end); a width truncates, except after a leading ``0``, where it pads on the left with zeros
  and never truncates: ``%08Xu%08Xv`` is the default, ``000000016b15ba77``.

This module is pure (no I/O): :mod:`mailslot.config` validates a format with it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT = "%08Xu%08Xv"  # Dovecot 2.3's pop3_uidl_format default

_SHORT = {"u": "uid", "v": "uidvalidity", "f": "filename", "g": "guid", "m": "md5"}
_MODIFIERS = frozenset("LUXRTEM")
_REFUSED_MODIFIERS = {
    "H": "%H (a hash modulo the width)",
    "N": "%N (a hash modulo the width)",
    "D": "%D (an LDAP DN)",
}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # a long name from _SHORT
    modifiers: str
    offset: int
    width: int
    zero_padding: bool


class UidlFormat:
    """A parsed ``pop3_uidl_format``; :meth:`expand` builds one message's unique-id.

    Raises ValueError naming what is not supported.
    """

    __slots__ = ("_parts", "_templates", "text", "variables")

    def __init__(self, text: str) -> None:
        self.text = text
        self._parts = _parse(text)
        self.variables = frozenset(p.name for p in self._parts if isinstance(p, _Field))
        self._templates: dict[int, str | None] = {}

    def expand_all(
        self,
        uids: list[int],
        uidvalidity: int,
        filenames: list[str],
        extensions: Mapping[str, Mapping[str, str]],
    ) -> list[str]:
        """:meth:`expand` for many messages of one mailbox (a login lists them all).

        The usual formats become one ``str.format`` template per UIDVALIDITY, run over all
        messages at once (100,000 of them in some 30 ms instead of a second); ``extensions``
        are the uidlist's fields per file name (``G`` is the GUID).
        """
        guids = filenames
        if "guid" in self.variables and extensions:
            guids = [extensions.get(f, {}).get("G") or f for f in filenames]
        template = self._templates.get(uidvalidity, "")
        if template == "":
            template = self._templates[uidvalidity] = self._template(uidvalidity)
            if len(self._templates) > 16:  # UIDVALIDITY changes rarely; keep a few
                # Worker threads share this dict: another may have emptied it meanwhile.
                with contextlib.suppress(StopIteration, RuntimeError):
                    self._templates.pop(next(iter(self._templates)), None)
        if template is not None:
            return list(map(template.format, uids, filenames, guids))
        return list(map(self.expand, uids, [uidvalidity] * len(uids), filenames, guids))

    def _template(self, uidvalidity: int) -> str | None:
        """A ``str.format`` template of ``(uid, filename, guid)``, or None if a field needs
        more than format specifiers can say."""
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part.replace("{", "{{").replace("}", "}}"))
                continue
            if part.name == "uidvalidity":
                out.append(_field(part, str(uidvalidity)).replace("{", "{{").replace("}", "}}"))
                continue
            plain = part.offset == 0 and part.width == 0
            if part.name == "uid" and part.offset == 0 and part.modifiers in ("", "X"):
                kind = "x" if part.modifiers else "d"
                if part.width == 0:
                    out.append("{0:%s}" % kind)  # noqa: UP031
                elif part.zero_padding and part.width > 0:
                    out.append("{0:0%d%s}" % (part.width, kind))  # noqa: UP031
                else:
                    return None
            elif part.name in ("filename", "guid") and plain and not part.modifiers:
                out.append("{1}" if part.name == "filename" else "{2}")
            else:
                return None
        return "".join(out)

    def expand(self, uid: int, uidvalidity: int, filename: str, guid: str) -> str:
        values = {"uid": str(uid), "uidvalidity": str(uidvalidity), "filename": filename}
        values["guid"] = guid
        out: list[str] = []
        for part in self._parts:
            out.append(part if isinstance(part, str) else _field(part, values[part.name]))
        return "".join(out)


def _parse(text: str) -> list[str | _Field]:
    if not text:
        raise ValueError("must not be empty")
    parts: list[str | _Field] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        i += 1
        if c != "%":
            literal.append(c)
            continue
        # [<offset>.]<width>[<modifiers>]<variable>, as Dovecot 2.3's var_expand reads it.
        sign = 1
        if i < n and text[i] == "-":
            sign, i = -1, i + 1
        zero = i < n and text[i] == "0"
        if zero:
            i += 1
        width = 0
        while i < n and text[i].isdigit() and text[i].isascii():
            width, i = width * 10 + int(text[i]), i + 1
        offset = 0
        if i < n and text[i] == ".":
            offset, sign, width, i = sign * width, 1, 0, i + 1
            zero = i < n and text[i] == "0"
            if zero:
                i += 1
            if i < n and text[i] == "-":
                sign, i = -1, i + 1
            while i < n and text[i].isdigit() and text[i].isascii():
                width, i = width * 10 + int(text[i]), i + 1
        width *= sign
        modifiers = ""
        while i < n and (text[i] in _MODIFIERS or text[i] in _REFUSED_MODIFIERS):
            if text[i] in _REFUSED_MODIFIERS:
                raise ValueError(f"{_REFUSED_MODIFIERS[text[i]]} is not supported")
            if len(modifiers) == 10:  # Dovecot's MAX_MODIFIER_COUNT
                break
            modifiers, i = modifiers + text[i], i + 1
        if i >= n:
            raise ValueError("ends inside a %-variable")
        if text[i] == "{":
            end = text.find("}", i)
            if end < 0:
                raise ValueError("a %{ is not closed by }")
            name, i = text[i + 1 : end], end + 1
            if name not in _SHORT.values():
                raise ValueError(
                    f"unknown variable %{{{name}}}; use uid, uidvalidity, filename, guid"
                )
        else:
            key, i = text[i], i + 1
            if key == "%" and not modifiers and not width and not offset:
                literal.append("%")
                continue
            if key not in _SHORT:
                raise ValueError(f"unknown variable %{key}; use %u, %v, %f or %g")
            name = _SHORT[key]
        if name == "md5":
            raise ValueError("%m (header MD5) is not available for Maildir, in Dovecot either")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(_Field(name, modifiers, offset, width, zero))
    if literal:
        parts.append("".join(literal))
    return parts


def _modify(modifier: str, value: str) -> str:
    if modifier == "L":
        return "".join(c.lower() if c.isascii() else c for c in value)
    if modifier == "U":
        return "".join(c.upper() if c.isascii() else c for c in value)
    if modifier == "X":
        # str_to_ullong: digits only, else 0; printed with %llx.
        number = int(value) if value.isdigit() and value.isascii() else 0
        return f"{number if number < 1 << 64 else 0:x}"
    if modifier == "R":
        return value[::-1]
    if modifier == "T":
        return value.rstrip(" \t\r\n")
    if modifier == "E":
        return "".join("\\" + c if c in "\\\"'" else c for c in value)
    assert modifier == "M"
    return hashlib.md5(value.encode("utf-8", "surrogateescape")).hexdigest()  # noqa: S324


def _field(field: _Field, value: str) -> str:
    for modifier in field.modifiers:
        value = _modify(modifier, value)
    if field.offset < 0:
        if len(value) > -field.offset:
            value = value[field.offset :]
    else:
        value = value[field.offset :]
    width = field.width
    if width == 0:
        return value
    if not field.zero_padding:
        if width < 0:
            width = len(value) + width
            if width < 0:  # a negative size_t: no limit
                return value
        return value[:width]
    return value.rjust(width, "0")
