"""Shaping a received message for the maildrop, as Dovecot's LDA and LMTP do.

* Line ends: SMTP carries CRLF (RFC 5321 section 2.3.8); Maildir files hold LF, as Dovecot and
  every Maildir MDA write them.  POP3 RETR turns each LF back into CRLF (RFC 1939 section 3),
  so a message whose lines all end in CRLF is given back byte for byte.  (A bare LF received
  inside a line comes back as CRLF; a CR before a CRLF is kept.)
* Dot-stuffing (RFC 5321 section 4.5.2) is already undone by aiosmtpd before the handler runs.
* Trace fields: ``Return-Path: <sender>`` (RFC 5322 section 3.6.7, added at final delivery per
  RFC 5321 section 4.4) and ``Delivered-To: recipient`` (the de-facto field Postfix and Dovecot
  add for loop detection), prepended to the header.
* An mbox ``From sender date`` first line, which Postfix's local(8) puts before the message it
  pipes to ``mailbox_command``, is removed; its sender is the envelope sender.
"""

from __future__ import annotations

import re

# RFC 5322 section 3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126.
_FIELD_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_TRACE_NAMES = (b"return-path", b"delivered-to", b"x-original-to")


class UnsafeTraceValue(ValueError):
    """A sender or recipient holding a control character would forge header lines."""


def to_lf(data: bytes) -> bytes:
    """Replace every CRLF with LF (see the module docstring)."""
    return data.replace(b"\r\n", b"\n")


def split_mbox_from(data: bytes) -> tuple[bytes, str | None]:
    """Remove an mbox ``From `` first line; return the rest and that line's sender, if any.

    Postfix writes ``MAILER-DAEMON`` for the null sender, which is returned as ``""``.
    """
    if not data.startswith(b"From "):
        return data, None
    end = data.find(b"\n")
    line = data[5:] if end < 0 else data[5:end]
    rest = b"" if end < 0 else data[end + 1 :]
    fields = line.decode("utf-8", "surrogateescape").split()
    sender = fields[0] if fields else ""
    if sender == "MAILER-DAEMON":
        sender = ""
    return rest, sender


def looks_like_message(data: bytes) -> bool:
    """Whether ``data`` begins with a header field (RFC 5322 section 2.2).

    A message without any header field is valid syntax, but no MTA produces one; input that
    does not start with a field is far more likely a mistake (an empty pipe, a wrong file).
    """
    return _FIELD_LINE.match(data) is not None


def top_trace_fields(data: bytes) -> dict[bytes, list[bytes]]:
    """The trace fields an MTA prepended: the leading Return-Path, Delivered-To, X-Original-To.

    Keys are lowercased field names; values are stripped field bodies.
    """
    found: dict[bytes, list[bytes]] = {}
    for line in data.split(b"\n", 64)[:64]:
        name, colon, value = line.partition(b":")
        key = name.strip().lower()
        if not colon or key not in _TRACE_NAMES:
            break
        found.setdefault(key, []).append(value.strip())
    return found


def _check(value: str) -> bytes:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise UnsafeTraceValue("address contains a control character")
    return value.encode("utf-8", "surrogateescape")


def trace_fields(sender: str | None, recipient: str | None) -> bytes:
    """``Return-Path`` (if ``sender`` is not None; ``""`` is the null sender) and ``Delivered-To``.

    Lines end in LF, ready to prepend to a message :func:`to_lf` produced.
    """
    out = b""
    if sender is not None:
        out += b"Return-Path: <" + _check(sender) + b">\n"
    if recipient is not None:
        out += b"Delivered-To: " + _check(recipient) + b"\n"
    return out
