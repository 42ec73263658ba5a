"""Play the "C:"/"S:" dialogues in this folder against the sans-IO core; see README.md.

Each ``*.txt`` file is one session.  Client lines are fed to :class:`Connection`, the events it
raises are answered from a fixed in-memory maildrop, and what the core sends must equal the
server lines byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from mailslot.protocol.connection import Connection, CoreConfig
from mailslot.protocol.dotstuff import wire_size
from mailslot.protocol.events import (
    NEED_DATA,
    Authenticate,
    Close,
    Commit,
    RetrieveMessage,
    StartTls,
)
from mailslot.protocol.responses import Failure
from mailslot.protocol.state import State

HERE = Path(__file__).parent
TRANSCRIPTS = sorted(HERE.glob("*.txt"))

# The maildrop every transcript sees: the two messages of RFC 1939 section 10 (120 and 200
# octets on the wire).  Message 1 is stored with LF line ends, message 2 with CRLF.
MESSAGES: tuple[tuple[str, bytes], ...] = (
    (
        "whqtswO00WBw418f9t5JxYwZ",
        b"From: mrose@example.org\nTo: alice@example.org\nSubject: first\n"
        b"Padding: 12345678\n\nHello Alice.\n.A line with a dot.\n",
    ),
    (
        "QhdPYR:00WBw1Ph7x7",
        b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: second\r\n"
        b"X-Pad: " + b"x" * 96 + b"\r\n\r\nLine 1.\r\nLine 2.\r\n.\r\nLine 4.\r\n",
    ),
)
ACCOUNTS = {"alice": "secret", "mrose": "tanstaaf", "test": "test"}


@dataclass(frozen=True, slots=True)
class Entry:
    uid: str
    size: int


SNAPSHOT = [Entry(uid, wire_size(data)) for uid, data in MESSAGES]


def test_maildrop_sizes_are_those_of_rfc_1939_section_10() -> None:
    assert [e.size for e in SNAPSHOT] == [120, 200]


_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|\\)")


def unescape(text: str) -> bytes:
    r"""``\xHH`` is one byte, ``\\`` a backslash; everything else is literal (UTF-8)."""

    def one(match: re.Match[bytes]) -> bytes:
        token = match.group(1)
        return b"\\" if token == b"\\" else bytes([int(token[1:], 16)])

    return _ESCAPE.sub(one, text.encode())


@dataclass
class Transcript:
    config: CoreConfig = field(default_factory=CoreConfig)
    login_failure: Failure | None = None
    message_failure: Failure | None = None
    commit_failure: Failure | None = None
    steps: list[tuple[str, bytes]] = field(default_factory=list)  # (kind, payload)


_CONFIG_FIELDS = {f.name: f.type for f in fields(CoreConfig)}


def parse(path: Path) -> Transcript:
    script = Transcript()
    config: dict[str, object] = {}
    for number, raw in enumerate(path.read_text("utf-8").split("\n"), 1):
        line = raw.removesuffix("\r")
        where = f"{path.name}:{number}"
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            directive, *args = line[1:].split()
            if directive == "config":
                for arg in args:
                    key, _, value = arg.partition("=")
                    assert key in _CONFIG_FIELDS, where
                    config[key] = int(value) if value.isdigit() else value == "true"
            elif directive in {"login-failure", "message-failure", "commit-failure"}:
                setattr(script, directive.replace("-", "_"), Failure[args[0]])
            else:
                raise AssertionError(f"{where}: unknown directive {directive}")
        elif line.startswith(("C: ", "S: ")) or line in {"C:", "S:"}:
            script.steps.append((line[0], unescape(line[3:])))
        elif line.startswith("= "):
            script.steps.append(("=", line[2:].encode()))
        else:
            raise AssertionError(f"{where}: cannot read {line!r}")
    script.config = CoreConfig(**config)  # type: ignore[arg-type]
    return script


class Player:
    """Drives the core and answers its events from the fixed maildrop."""

    def __init__(self, script: Transcript) -> None:
        self.script = script
        self.conn = Connection(script.config)
        self.commits: list[list[int]] = []

    def run(self) -> bytes:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or isinstance(event, Close):
                return self.conn.data_to_send()
            match event:
                case Authenticate(username=user, password=password):
                    if self.script.login_failure is not None:
                        self.conn.login_failed(self.script.login_failure)
                    elif ACCOUNTS.get(user) == password:
                        self.conn.login_succeeded(SNAPSHOT)
                    else:
                        self.conn.login_failed(Failure.AUTH)
                case RetrieveMessage(number=number):
                    if self.script.message_failure is not None:
                        self.conn.message_failed(self.script.message_failure)
                        continue
                    self.conn.message_started()
                    data = MESSAGES[number - 1][1]
                    for start in range(0, len(data), 16):
                        if not self.conn.message_data(data[start : start + 16]):
                            break
                    self.conn.message_finished()
                case Commit(deleted=deleted):
                    self.commits.append([n for n, e in enumerate(SNAPSHOT, 1) if e in deleted])
                    if self.script.commit_failure is not None:
                        self.conn.commit_failed(self.script.commit_failure)
                    else:
                        self.conn.commit_succeeded()
                case StartTls():
                    self.conn.tls_started()
                case _:
                    pass


def play(path: Path) -> None:
    script = parse(path)
    player = Player(script)
    pending = player.conn.data_to_send()  # the greeting
    client = bytearray()
    expected = bytearray()

    def exchange() -> None:
        nonlocal pending
        if client:
            player.conn.receive_data(bytes(client))
            client.clear()
            pending += player.run()
        assert pending.decode("latin-1") == expected.decode("latin-1")
        pending = b""
        expected.clear()

    for kind, payload in script.steps:
        if kind == "C":
            if expected:
                exchange()
            client.extend(payload + b"\r\n")
        elif kind == "S":
            expected.extend(payload + b"\r\n")
        else:
            exchange()
            check(player, payload.decode())
    exchange()


def check(player: Player, assertion: str) -> None:
    word, _, rest = assertion.partition(" ")
    match word:
        case "eof":
            player.conn.receive_data(b"")
            assert player.run() == b""
        case "closed":
            assert player.conn.closed
        case "open":
            assert not player.conn.closed
        case "state":
            assert player.conn.state is State[rest]
        case "commit":
            assert player.commits == [[int(n) for n in rest.split()]]
        case "no-commit":
            assert player.commits == []
        case _:
            raise AssertionError(f"unknown assertion {assertion!r}")


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(path: Path) -> None:
    play(path)


def test_there_are_transcripts() -> None:
    assert len(TRANSCRIPTS) >= 5
