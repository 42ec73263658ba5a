"""The admin socket's wire format: one request line, one response line, both JSON.

A client connects to the Unix socket, writes one request and reads one response; then either
side closes.  Each is a JSON object (RFC 8259) on one line, UTF-8, ended by ``\\n``, at most
:data:`MAX_LINE` octets::

    {"version": 1, "command": "who"}
    {"version": 1, "command": "kick", "user": "alice"}
    {"version": 1, "command": "kick", "address": "192.0.2.7"}
    {"version": 1, "command": "mailbox-status", "user": "alice"}
    {"version": 1, "command": "reload"}
    {"version": 1, "command": "stop"}

    {"ok": true, "result": {...}}
    {"ok": false, "error": "no such user", "code": "nouser"}

The result's shape per command is in docs/cli.md.  This module is sans-IO: it turns bytes into
values and back, and checks everything it reads; nothing here touches a socket.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from mailslot.auth.usernames import InvalidUsername, validate

__all__ = [
    "COMMANDS",
    "MAX_LINE",
    "VERSION",
    "AdminProtocolError",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

VERSION = 1
#: One line of either direction, ``\n`` included: a ``who`` of thousands of sessions fits.
MAX_LINE = 16 * 1024 * 1024
_MAX_REQUEST = 4096

Command = Literal["who", "kick", "mailbox-status", "reload", "stop"]
COMMANDS: tuple[Command, ...] = ("who", "kick", "mailbox-status", "reload", "stop")
#: Why a request failed, for the CLI's exit status (docs/cli.md).
ErrorCode = Literal["usage", "nouser", "unavailable", "denied", "internal"]
_ERROR_CODES: tuple[ErrorCode, ...] = ("usage", "nouser", "unavailable", "denied", "internal")


class AdminProtocolError(ValueError):
    """Bytes that are not a valid request or response (the message says why)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request.  ``kick`` takes ``user`` or ``address`` (not both); ``mailbox-status``
    takes ``user``; the others take neither."""

    command: Command
    user: str | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise AdminProtocolError(f"unknown command {self.command!r}")
        if self.user is not None:
            try:
                validate(self.user)
            except InvalidUsername as exc:
                raise AdminProtocolError(f"invalid user name: {exc}") from None
        if self.address is not None:
            try:
                ipaddress.ip_address(self.address)
            except ValueError:
                raise AdminProtocolError("address must be an IPv4 or IPv6 address") from None
        if self.command == "kick":
            if (self.user is None) == (self.address is None):
                raise AdminProtocolError("kick needs a user or an address, not both")
        elif self.command == "mailbox-status":
            if self.user is None or self.address is not None:
                raise AdminProtocolError("mailbox-status needs a user and nothing else")
        elif self.user is not None or self.address is not None:
            raise AdminProtocolError(f"{self.command} takes no user or address")


@dataclass(frozen=True, slots=True)
class Response:
    """One response: ``result`` when ``ok``, else ``error`` and its ``code``."""

    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    code: ErrorCode = "internal"

    @classmethod
    def success(cls, result: dict[str, Any]) -> Response:
        return cls(True, result)

    @classmethod
    def failure(cls, error: str, code: ErrorCode = "internal") -> Response:
        return cls(False, error=error, code=code)


def encode_request(request: Request) -> bytes:
    body: dict[str, Any] = {"version": VERSION, "command": request.command}
    if request.user is not None:
        body["user"] = request.user
    if request.address is not None:
        body["address"] = request.address
    return _line(body)


def decode_request(line: bytes) -> Request:
    """The request on ``line`` (its ``\\n`` optional); :class:`AdminProtocolError` if bad."""
    if len(line) > _MAX_REQUEST:
        raise AdminProtocolError(f"a request is at most {_MAX_REQUEST} octets")
    body = _object(line)
    unknown = set(body) - {"version", "command", "user", "address"}
    if unknown:
        raise AdminProtocolError(f"unknown field {sorted(unknown)[0]!r}")
    if body.get("version") != VERSION:
        raise AdminProtocolError(f"version must be {VERSION}")
    command = body.get("command")
    user, address = body.get("user"), body.get("address")
    if not isinstance(command, str):
        raise AdminProtocolError("command must be a string")
    for name, value in (("user", user), ("address", address)):
        if value is not None and not isinstance(value, str):
            raise AdminProtocolError(f"{name} must be a string")
    return Request(cast(Command, command), cast("str | None", user), cast("str | None", address))


def encode_response(response: Response) -> bytes:
    if response.ok:
        return _line({"ok": True, "result": response.result})
    return _line({"ok": False, "error": response.error, "code": response.code})


def decode_response(line: bytes) -> Response:
    body = _object(line)
    ok = body.get("ok")
    if ok is True:
        result = body.get("result")
        if not isinstance(result, dict):
            raise AdminProtocolError("result must be an object")
        return Response.success(result)
    if ok is False:
        error, code = body.get("error"), body.get("code")
        if not isinstance(error, str) or code not in _ERROR_CODES:
            raise AdminProtocolError("a failure needs an error string and a known code")
        return Response.failure(error, cast(ErrorCode, code))
    raise AdminProtocolError("ok must be true or false")


def _line(body: dict[str, Any]) -> bytes:
    # ensure_ascii: the line never holds a raw newline or control byte, whatever a name holds.
    data = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
    if len(data) > MAX_LINE:
        raise AdminProtocolError(f"a line is at most {MAX_LINE} octets")
    return data


def _object(line: bytes) -> dict[str, Any]:
    if line.endswith(b"\n"):
        line = line[:-1]
    if b"\n" in line:
        raise AdminProtocolError("one line only")
    try:
        body = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AdminProtocolError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise AdminProtocolError("must be a JSON object")
    return cast(dict[str, Any], body)
