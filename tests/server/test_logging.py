"""What ``mailslot serve`` writes to stderr: one line per event with control bytes escaped,
and never a password or a SASL payload.  The log is read as bytes from the server's stderr.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
from collections.abc import Callable

import pytest
from tests.support.passwd import PasswdUser
from tests.support.server import MailslotServer
from tests.support.wire import Pop3Wire

# Every line the server writes starts like this (log.setup's format).
_RECORD = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
_FORBIDDEN = [b"\r", b"\x1b", b"\x07", b"\x00", "\u2028".encode(), "\x85".encode()]

DAVE = PasswdUser("dave", "Zq9-dave-distinct-password")
WRONG = "Wr0ng-distinct-guess-7731"


def log_bytes(server: MailslotServer) -> bytes:
    return server.log_path.read_bytes()


def assert_one_record_per_line(server: MailslotServer) -> None:
    data = log_bytes(server)
    for forbidden in _FORBIDDEN:
        assert forbidden not in data, (forbidden, data)
    for line in data.split(b"\n")[:-1]:
        assert _RECORD.match(line), line


def stls_wire(server: MailslotServer) -> Pop3Wire:
    host, port = server.starttls
    wire = Pop3Wire(host, port)
    assert wire.command("STLS").startswith(b"+OK")
    wire.start_tls(server.tls_files.client_context())
    return wire


@pytest.fixture
def server(mailslot_factory: Callable[..., MailslotServer]) -> MailslotServer:
    return mailslot_factory(extra_users=[DAVE], extra_sections={"log": {"level": "debug"}})


def test_hostile_user_name_gives_one_escaped_line(server: MailslotServer) -> None:
    with stls_wire(server) as wire:
        assert wire.command(b"USER ev\ril\x1b[31mred\x07FAKE").startswith(b"+OK")
        assert wire.command("PASS whatever").startswith(b"-ERR")
        assert wire.command("QUIT").startswith(b"+OK")
    lines = server.wait_for_log("login failed: user=ev")
    assert len(lines) == 1
    assert "user=ev\\x0dil\\x1b[31mred\\x07FAKE mechanism=USER" in lines[0]
    server.wait_for_log("reason=quit")
    assert_one_record_per_line(server)


def test_hostile_sasl_user_name_with_line_breaks_gives_one_escaped_line(
    server: MailslotServer,
) -> None:
    name = "mal\r\n2030-01-01 00:00:00,000 INFO forged: user=root\x1b]0;t\x07\u2028\x85end"
    payload = base64.b64encode(b"\0" + name.encode() + b"\0" + WRONG.encode())
    with stls_wire(server) as wire:
        assert wire.command(b"AUTH PLAIN " + payload).startswith(b"-ERR [AUTH]")
        assert wire.command("QUIT").startswith(b"+OK")
    lines = server.wait_for_log('login failed: user="mal')
    assert len(lines) == 1
    # Quoted, as it holds spaces: its " user=root" is no field of the line.
    assert 'user="mal\\x0d\\x0a2030-01-01 00:00:00,000 INFO forged: user=root' in lines[0]
    assert "\\x1b]0;t\\x07\\u2028\\u0085end" in lines[0]
    assert not [line for line in log_bytes(server).split(b"\n") if b"forged" in line[:40]]
    server.wait_for_log("reason=quit")
    assert_one_record_per_line(server)


def test_no_password_or_sasl_payload_in_the_log(server: MailslotServer) -> None:
    good = base64.b64encode(b"\0dave\0" + DAVE.password.encode())
    bad = base64.b64encode(b"\0dave\0" + WRONG.encode())
    # A fresh connection for each attempt: repeated failures end a session early.
    with stls_wire(server) as wire:
        assert wire.command("USER dave").startswith(b"+OK")
        assert wire.command(f"PASS {WRONG}").startswith(b"-ERR [AUTH]")
    with stls_wire(server) as wire:
        assert wire.command(b"AUTH PLAIN " + bad).startswith(b"-ERR [AUTH]")
    with stls_wire(server) as wire:
        assert wire.command("AUTH PLAIN").startswith(b"+ ")
        assert wire.command(bad).startswith(b"-ERR [AUTH]")
    with stls_wire(server) as wire:
        wire.login("dave", DAVE.password)
        assert wire.command("QUIT").startswith(b"+OK")
    with stls_wire(server) as wire:
        assert wire.command("AUTH PLAIN").startswith(b"+ ")
        assert wire.command(good).startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
    with stls_wire(server) as wire:
        assert wire.command(b"AUTH PLAIN " + good).startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
    server.wait_for_log("login failed: user=dave", 3)
    server.wait_for_log("login: user=dave", 3)
    server.wait_for_log("reason=quit user=dave", 3)
    data = log_bytes(server)
    for secret in (DAVE.password.encode(), WRONG.encode(), good, bad, good[8:], bad[8:]):
        assert secret not in data, secret
    # Nor the parts a tokenising logger might keep.
    assert b"Zq9-dave" not in data and b"distinct-guess" not in data


def _failed_handshakes(server: MailslotServer) -> None:
    """An old-TLS client, then a plaintext client sending terminal escapes, on the TLS port."""
    host, port = server.implicit
    client = server.tls_files.client_context()
    client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("ALL:@SECLEVEL=0")
    with (
        socket.create_connection((host, port), timeout=30) as raw,
        pytest.raises(ssl.SSLError),
    ):
        client.wrap_socket(raw, server_hostname="localhost")
    with socket.create_connection((host, port), timeout=30) as raw:
        raw.sendall(b"USER \x1b[2J\r\n" * 4)
        while raw.recv(4096):
            pass


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning")
def test_failed_implicit_tls_handshakes_leave_no_trace_or_raw_bytes(
    server: MailslotServer,
) -> None:
    _failed_handshakes(server)
    # The server still serves, and logged nothing multi-line about the failures.
    with stls_wire(server) as wire:
        assert wire.command("QUIT").startswith(b"+OK")
    server.wait_for_log("reason=quit", 2)
    assert b"Traceback" not in log_bytes(server)
    assert_one_record_per_line(server)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning")
def test_each_failed_implicit_tls_handshake_is_one_log_line(server: MailslotServer) -> None:
    _failed_handshakes(server)
    with stls_wire(server) as wire:
        assert wire.command("QUIT").startswith(b"+OK")
    server.wait_for_log("reason=quit", 2)
    lines = [line for line in log_bytes(server).split(b"\n") if b"session=" not in line]
    failures = [
        line
        for line in lines
        if b"connection error" in line.lower() or b"handshake" in line.lower()
    ]
    assert len(failures) == 2, lines
