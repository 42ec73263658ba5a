#!/usr/bin/env python3
"""Fuzz SASL decoding: base64 responses and PLAIN's fields (RFC 5034 section 4, RFC 4616).

Input: one octet choosing what the rest is (a base64 line, or a decoded PLAIN message), then
that.  Properties checked, beyond "no crash":

- :func:`decode_response` and :meth:`Plain.step` raise nothing but :class:`SaslError`;
- a decoded response is the canonical encoding of what it decodes to (one spelling per
  response, RFC 4648 sections 3.3 and 3.5), and any octets encoded decode back to themselves;
- PLAIN gives credentials only for ``authzid NUL authcid NUL passwd`` with a non-empty
  authcid, every field UTF-8 without NUL and at most 255 octets, and they join back into the
  message; no response asks for another challenge;
- a whole :class:`Connection` agrees, with the response as an initial response and as a
  continuation line: the same credentials in an ``Authenticate`` event (whose repr never holds
  the password), or ``-ERR [AUTH]`` and no event asking anything.

Run: ``python fuzz/fuzz_sasl.py fuzz/corpus/sasl -runs=N`` (see docs/fuzzing.md).
"""

from __future__ import annotations

import base64
import dataclasses

from _harness import Reader, main

from mailslot.protocol.connection import Connection, CoreConfig
from mailslot.protocol.events import NEED_DATA, Authenticate, BadCommand, Close
from mailslot.protocol.sasl import Challenge, Credentials, Plain, SaslError, decode_response

_CONFIG = CoreConfig(allow_plaintext=True, sasl_line_length=8192)
_MALFORMED = b"-ERR [AUTH] Invalid base64 or SASL message.\r\n"


def plain_step(message: bytes) -> Credentials | None:
    """PLAIN on ``message``, checked against its definition; None when refused."""
    try:
        result = Plain().step(message)
    except SaslError:
        parts = message.split(b"\x00")
        valid = (
            len(parts) == 3
            and parts[1] != b""
            and all(len(part) <= 255 for part in parts)
            and _is_utf8(parts)
        )
        assert not valid, f"a valid PLAIN message was refused: {message!r}"
        return None
    assert not isinstance(result, Challenge), "PLAIN asked for more after a response"
    assert isinstance(result, Credentials)
    fields = [result.authzid or "", result.authcid, result.password]
    assert result.authcid and result.authzid != ""
    for text in fields:
        assert "\x00" not in text and len(text.encode()) <= 255
    assert b"\x00".join(text.encode() for text in fields) == message
    return result


def _is_utf8(parts: list[bytes]) -> bool:
    try:
        for part in parts:
            part.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode(line: bytes) -> bytes | None:
    """``decode_response`` checked: canonical when it succeeds, SaslError otherwise."""
    try:
        decoded = decode_response(line)
    except SaslError:
        try:
            strict = base64.b64decode(line, validate=True)
        except ValueError:  # binascii.Error
            return None
        assert base64.b64encode(strict) != line, f"canonical base64 refused: {line!r}"
        return None
    assert base64.b64encode(decoded) == line, f"non-canonical base64 accepted: {line!r}"
    return decoded


def connection_auth(line: bytes, initial: bool) -> Authenticate | None:
    """Send ``AUTH PLAIN`` with ``line`` to a fresh Connection; the Authenticate, if any."""
    conn = Connection(_CONFIG)
    conn.data_to_send()
    if initial:
        conn.receive_data(b"AUTH PLAIN " + line + b"\r\n")
    else:
        conn.receive_data(b"AUTH PLAIN\r\n")
        assert conn.next_event() is NEED_DATA
        assert conn.data_to_send() == b"+ \r\n"
        conn.receive_data(line + b"\r\n")
    event = conn.next_event()
    out = conn.data_to_send()
    if isinstance(event, Authenticate):
        assert out == b""
        # The repr a log line could show does not depend on the password at all.
        assert repr(event) == repr(dataclasses.replace(event, password="")), event
        return event
    assert isinstance(event, (BadCommand, Close)), event
    assert out.endswith(_MALFORMED), out
    return None


def check_response(line: bytes, message: bytes | None) -> None:
    """``line`` (base64, a client's response) decodes to ``message`` or is refused."""
    credentials = plain_step(message) if message is not None else None
    if b"\r" in line or b"\n" in line or len(line) > 8000:
        return
    for initial in (True, False):
        if initial and (b" " in line or line in (b"", b"=") or len(line) > 242):
            continue  # another command, RFC 5034's empty initial response, over 255 octets
        if not initial and line == b"*":
            continue  # the client cancels (RFC 5034 section 4)
        event = connection_auth(line, initial)
        if credentials is None:
            assert event is None, (line, event)
        else:
            assert event == Authenticate(
                credentials.authcid, credentials.password, "PLAIN", credentials.authzid
            ), (line, event)


def check(data: bytes) -> None:
    """The property function: see the module docstring."""
    reader = Reader(data)
    mode = reader.byte()
    payload = reader.rest()
    if mode & 1:
        # The payload is what a client encodes: encoding is decoding's inverse.
        line = base64.b64encode(payload)
        assert decode(line) == payload
        check_response(line, payload)
    else:
        check_response(payload, decode(payload))


if __name__ == "__main__":
    main(check)
