"""The logout summary in the session's last log line, against what a real client did, in
both ``[log] format``s, and against a real Dovecot's logout line for the same session.
"""

from __future__ import annotations

import base64
import json
import poplib
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from tests.support.dovecot import DovecotServer
from tests.support.maildir import SAMPLE_MESSAGES, MaildirBuilder
from tests.support.passwd import DEFAULT_USERS
from tests.support.server import MailslotServer
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire

DEADLINE = 15.0
CORPUS = [data for name, data in SAMPLE_MESSAGES.items() if name != "empty"]
FIRST_SECONDS = 1_650_000_000
ALL_VARIABLES = "top=%t/%p, retr=%r/%b, del=%d/%m, size=%s, in=%i, out=%o, uidl=%u"


def text_fields(line: str) -> dict[str, str]:
    """key=value and key="quoted value" pairs of a text line."""
    return {
        key: quoted.replace('\\"', '"') if quoted else plain
        for key, quoted, plain in re.findall(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|(\S*))', line)
    }


def reply_octets(response: bytes, lines: list[bytes]) -> int:
    """What Dovecot counts for a RETR or TOP (and mailslot with it): the +OK line and the
    dot-stuffed lines, not the terminator.  poplib hands lines back unstuffed."""
    stuffed = sum(1 for line in lines if line.startswith(b"."))
    return len(response) + 2 + sum(len(line) + 2 for line in lines) + stuffed


def client_session(server: MailslotServer) -> dict[str, Any]:
    """RETR 1, TOP 2 3, RETR 2, DELE 1, DELE 3, QUIT over implicit TLS with poplib."""
    host, port = server.implicit
    pop = poplib.POP3_SSL(host, port, context=server.tls_files.client_context(), timeout=10)
    pop.user("alice")
    pop.pass_(server.password("alice"))
    count, size = pop.stat()
    octets = {"retr": 0, "top": 0}
    for verb, call in [
        ("retr", lambda: pop.retr(1)),
        ("top", lambda: pop.top(2, 3)),
        ("retr", lambda: pop.retr(2)),
    ]:
        response, lines, _ = call()
        octets[verb] += reply_octets(response, lines)
    deleted = [pop.list(1), pop.list(3)]
    pop.dele(1)
    pop.dele(3)
    pop.quit()
    sent = sum(len(c) + 2 for c in ["STAT", "RETR 1", "TOP 2 3", "RETR 2", "LIST 1", "LIST 3"])
    sent += sum(len(c) + 2 for c in ["DELE 1", "DELE 3", "QUIT"])
    return {
        "count": count,
        "size": size,
        "octets": octets,
        "deleted_octets": sum(int(r.split()[2]) for r in deleted),
        "sent": sent,
    }


@pytest.fixture
def filled(mailslot_factory: Callable[..., MailslotServer]) -> Callable[[str], MailslotServer]:
    def make(style: str) -> MailslotServer:
        server = mailslot_factory(extra_sections={"log": {"format": style}})
        server.builder("alice").add_all(CORPUS[:4])
        return server

    return make


def test_text_logout_line_counts_what_the_poplib_client_did(
    filled: Callable[[str], MailslotServer],
) -> None:
    server = filled("text")
    did = client_session(server)
    (line,) = server.wait_for_log("user=alice retrieved=")
    fields = text_fields(line.split(" disconnect: ", 1)[1])
    retr, top = did["octets"]["retr"], did["octets"]["top"]
    assert fields["reason"] == "quit"
    assert fields["end"] == "quit"
    assert fields["retr"] == "2"
    assert fields["retr_octets"] == str(retr)
    assert fields["top"] == "1"
    assert fields["top_octets"] == str(top)
    assert fields["deleted"] == "2"
    assert fields["deleted_octets"] == str(did["deleted_octets"])
    assert fields["messages"] == str(did["count"])
    assert fields["size"] == str(did["size"])
    assert fields["bytes_in"] == str(did["sent"])
    assert fields["summary"] == (
        f"top=1/{top}, retr=2/{retr}, del=2/{did['count']}, size={did['size']}"
    )
    assert fields["listener"] == "implicit"
    assert fields["tls"].startswith("TLSv1.3/")
    assert fields["worker"] == "0"


def test_json_logout_object_has_the_same_counts(
    filled: Callable[[str], MailslotServer],
) -> None:
    server = filled("json")
    hostile = 'mal\r\n2030-01-01 00:00:00,000 INFO forged", "user": "root\x1b]0;t\x07\u2028end'
    with Pop3Wire(*server.implicit, tls_context=server.tls_files.client_context()) as wire:
        payload = base64.b64encode(b"\0" + hostile.encode() + b"\0wrong-guess-4417")
        assert wire.command(b"AUTH PLAIN " + payload).startswith(b"-ERR [AUTH]")
    did = client_session(server)
    (line,) = server.wait_for_log(
        '"event":"disconnect","message":"disconnect: reason=quit user=alice'
    )
    event = json.loads(line)
    retr, top = did["octets"]["retr"], did["octets"]["top"]
    assert event["level"] == "info"
    assert event["logger"] == "mailslot.session"
    assert event["user"] == "alice"
    assert event["end"] == "quit"
    assert (event["retr"], event["retr_octets"], event["top"], event["top_octets"]) == (
        2,
        retr,
        1,
        top,
    )
    assert (event["deleted"], event["deleted_octets"]) == (2, did["deleted_octets"])
    assert (event["messages"], event["size"], event["bytes_in"]) == (
        did["count"],
        did["size"],
        did["sent"],
    )
    assert event["summary"] == (
        f"top=1/{top}, retr=2/{retr}, del=2/{did['count']}, size={did['size']}"
    )
    assert event["listener"] == "implicit"
    assert event["worker"] == 0
    assert re.fullmatch(r"[0-9a-f]+", event["session"])
    assert event["peer"].startswith("127.0.0.1:")
    # Every line the server wrote is one JSON object; the hostile name is one escaped value.
    events = [json.loads(other) for other in server.log().splitlines()]
    assert all(isinstance(e, dict) for e in events)
    failed = [e for e in events if e["event"] == "login_failed"]
    assert len(failed) == 1
    # Escaped, and cut (at 64 characters before escaping) as any failed name is.
    assert failed[0]["user"].startswith(
        'mal\\x0d\\x0a2030-01-01 00:00:00,000 INFO forged", "user": "root\\x1b]0;t\\x07'
    )
    assert "wrong-guess-4417" not in server.log()


def _wire_session(
    host: str, port: int, tls: TlsFiles, password: str, uidl: str
) -> tuple[dict[str, list[int]], list[bytes]]:
    """The session; the length of each status line the server sent after login, by verb
    (the two servers word some of them differently: "+OK" for TOP, Dovecot's is bare), and
    the messages' lines as sent."""
    status: dict[str, list[int]] = {}
    with Pop3Wire(host, port) as wire:
        assert wire.command("STLS").startswith(b"+OK")
        wire.start_tls(tls.client_context())
        assert wire.command("USER alice").startswith(b"+OK")
        status["PASS"] = [len(wire.command(f"PASS {password}"))]  # "+OK Logged in." counts
        bodies: list[bytes] = []
        commands = ["STAT", "DELE 1", uidl, "RSET", "RETR 3", "TOP 2 3", "TOP 1 0", "RETR 4"]
        for command in [*commands, "NOOP", "DELE 2"]:
            reply = wire.command(command)
            assert reply.startswith(b"+OK"), reply
            status.setdefault(command.split()[0], []).append(len(reply))
            if command.startswith(("RETR", "TOP")) or command == "UIDL":
                bodies.append(wire.multiline())
        for command in ["DELE 4", "QUIT"]:
            reply = wire.command(command)
            assert reply.startswith(b"+OK"), reply
            status.setdefault(command.split()[0], []).append(len(reply))
    return status, bodies


def _fill(builder: MaildirBuilder) -> None:
    for i, data in enumerate(CORPUS):
        builder.add(data, folder="new" if i % 3 else "cur", flags="S" if i % 2 else "")


@pytest.mark.dovecot
@pytest.mark.parametrize("uidl", ["UIDL", "UIDL 2"])
def test_same_logout_numbers_as_dovecot(
    mailslot_factory: Callable[..., MailslotServer], tls_files: TlsFiles, uidl: str
) -> None:
    """Dovecot's pop3_logout_format and ours, with every variable, for the same session on
    the same Maildir: the same text."""
    server = mailslot_factory(extra_sections={"log": {"logout_format": ALL_VARIABLES}})
    _fill(MaildirBuilder(server.maildir("alice"), first_seconds=FIRST_SECONDS))
    dovecot = DovecotServer(
        tls_files, DEFAULT_USERS, settings={"pop3_logout_format": ALL_VARIABLES}
    )
    try:
        _fill(MaildirBuilder(dovecot.maildir("alice"), first_seconds=FIRST_SECONDS))
        dovecot.start()
        password = server.password("alice")
        our_status, our_bodies = _wire_session(*server.starttls, tls_files, password, uidl)
        their_status, their_bodies = _wire_session(
            "127.0.0.1", dovecot.pop3_port, tls_files, password, uidl
        )
        deadline = time.monotonic() + DEADLINE
        while True:
            theirs = re.findall(r"Disconnected: Logged out (.*)", dovecot.log())
            if theirs:
                break
            assert time.monotonic() < deadline, dovecot.log()
            time.sleep(0.05)
    finally:
        dovecot.stop()
    (line,) = server.wait_for_log("user=alice retrieved=")
    ours = text_fields(line)["summary"]
    pattern = r"top=2/(\d+), retr=2/(\d+), del=2/9, size=(\d+), in=(\d+), out=(\d+), uidl=(.+)"
    our_numbers = re.fullmatch(pattern, ours)
    their_numbers = re.fullmatch(pattern, theirs[0].strip())
    assert our_numbers is not None, ours
    assert their_numbers is not None, dovecot.final_log

    # The same numbers, but for the status lines the two servers word differently: the
    # messages are the same octets, and each count differs by exactly what the status
    # lines it includes differ by.
    assert our_bodies == their_bodies

    def worded(verbs: list[str]) -> int:
        return sum(sum(our_status[v]) - sum(their_status[v]) for v in verbs)

    top, retr, size, received, sent = (int(n) for n in our_numbers.groups()[:5])
    their_top, their_retr, their_size, their_received, their_sent = (
        int(n) for n in their_numbers.groups()[:5]
    )
    # %u: the messages before the first RETR (1 and 2, 1 marked while UIDL was asked, then
    # RSET) against those kept (2 and 4 stay marked): the two halves differ.
    assert our_numbers.group(6) == their_numbers.group(6)
    assert re.fullmatch(r"2/[0-9a-f]{8} -> 7/[0-9a-f]{8}", our_numbers.group(6))
    assert worded(["TOP"]) != 0  # "+OK Top of message follows." against "+OK"
    assert top == their_top + worded(["TOP"])
    assert retr == their_retr + worded(["RETR"])
    assert (size, received) == (their_size, their_received)
    assert sent == their_sent + worded(list(our_status))


def test_pipelined_commands_after_the_login_count_as_input(
    filled: Callable[[str], MailslotServer],
) -> None:
    """Commands sent in one packet with PASS are input after login (%i), the login's not."""
    server = filled("text")
    after = b"STAT\r\nNOOP\r\nQUIT\r\n"
    with Pop3Wire(*server.implicit, tls_context=server.tls_files.client_context()) as wire:
        wire.send(b"USER alice\r\nPASS " + server.password("alice").encode() + b"\r\n" + after)
        assert wire.read_until_eof().count(b"+OK") == 5
    (line,) = server.wait_for_log("user=alice retrieved=")
    fields = text_fields(line)
    assert fields["bytes_in"] == str(len(after))
    assert fields["end"] == "quit"
