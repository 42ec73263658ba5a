"""The admin socket's codec: one JSON line each way, every field checked (sans-IO)."""

from __future__ import annotations

import json

import pytest

from mailslot.admin.protocol import (
    AdminProtocolError,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)


@pytest.mark.parametrize(
    "request_",
    [
        Request("who"),
        Request("kick", user="alice"),
        Request("kick", address="192.0.2.7"),
        Request("kick", address="2001:db8::1"),
        Request("mailbox-status", user="carol@example.org"),
        Request("reload"),
        Request("stop"),
    ],
)
def test_requests_round_trip_as_one_line(request_: Request) -> None:
    line = encode_request(request_)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["version"] == 1
    assert decode_request(line) == request_


def test_a_request_reads_as_documented() -> None:
    assert decode_request(b'{"version": 1, "command": "kick", "user": "alice"}\n') == Request(
        "kick", user="alice"
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "not JSON"),
        (b"who\n", "not JSON"),
        (b"[1]\n", "JSON object"),
        (b'{"command": "who"}\n', "version must be 1"),
        (b'{"version": 2, "command": "who"}\n', "version must be 1"),
        (b'{"version": 1, "command": "rm"}\n', "unknown command"),
        (b'{"version": 1, "command": 7}\n', "command must be a string"),
        (b'{"version": 1, "command": "who", "extra": 1}\n', "unknown field"),
        (b'{"version": 1, "command": "who", "user": "alice"}\n', "takes no user"),
        (b'{"version": 1, "command": "kick"}\n', "a user or an address"),
        (b'{"version": 1, "command": "kick", "user": "a", "address": "::1"}\n', "not both"),
        (b'{"version": 1, "command": "kick", "address": "example.org"}\n', "IPv4 or IPv6"),
        (b'{"version": 1, "command": "kick", "user": "../etc"}\n', "invalid user name"),
        (b'{"version": 1, "command": "kick", "user": ["alice"]}\n', "user must be a string"),
        (b'{"version": 1, "command": "mailbox-status"}\n', "needs a user"),
        (b'{"version": 1,\n "command": "who"}\n', "one line only"),
        (b'{"version": 1, "command": "who"}' + b" " * 5000 + b"\n", "at most"),
        (b"\xff\n", "not JSON"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(AdminProtocolError, match=reason):
        decode_request(line)


def test_responses_round_trip() -> None:
    ok = Response.success({"sessions": [{"user": "alice", "worker": {"pid": 12}}]})
    assert decode_response(encode_response(ok)) == ok
    failed = Response.failure("no user 'bob'", "nouser")
    assert decode_response(encode_response(failed)) == failed
    assert json.loads(encode_response(failed)) == {
        "ok": False,
        "error": "no user 'bob'",
        "code": "nouser",
    }


def test_a_name_with_control_bytes_stays_on_one_line() -> None:
    line = encode_response(Response.success({"client": "a\nb\r\x00"}))
    assert line.count(b"\n") == 1 and b"\x00" not in line and b"\r" not in line
    assert decode_response(line).result == {"client": "a\nb\r\x00"}


@pytest.mark.parametrize(
    "line",
    [
        b'{"ok": "yes"}\n',
        b'{"ok": true, "result": []}\n',
        b'{"ok": false, "error": "x", "code": "weird"}\n',
        b'{"ok": false, "code": "usage"}\n',
    ],
)
def test_bad_responses_are_refused(line: bytes) -> None:
    with pytest.raises(AdminProtocolError):
        decode_response(line)
