"""Hypothesis rule-based tests over state x command, in the manner of h2's test_state_machines.py.

A small model of RFC 1939 (with RFC 2449 CAPA, RFC 2595 STLS and RFC 5034 AUTH PLAIN) predicts
each reply from the model state, written independently of the core; random command lines, valid
and invalid, one at a time or pipelined, are sent in random states.  Checked on every step:

- every command line gets exactly one reply: a status line, a multi-line response, or a ``+ ``
  SASL continuation; nothing else is sent and nothing after a close;
- the core never raises;
- the state moves only along AUTHORIZATION -> TRANSACTION -> UPDATE (or to CLOSED);
- STAT, LIST and UIDL agree with the model: deleted messages are never counted or listed;
- the events asked of the driver (login, message, commit, TLS) are the ones the model expects.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, Phase, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mailslot.protocol.connection import Connection, CoreConfig
from mailslot.protocol.dotstuff import wire_size
from mailslot.protocol.events import (
    NEED_DATA,
    Authenticate,
    BadCommand,
    Close,
    Commit,
    Reset,
    RetrieveMessage,
    StartTls,
)
from mailslot.protocol.responses import Failure
from mailslot.protocol.state import State

from .session import Entry
from .test_dotstuff import client_unstuff, ended, reference_top, to_crlf

A, T, U, C = State.AUTHORIZATION, State.TRANSACTION, State.UPDATE, State.CLOSED
TRANSITIONS = {(A, A), (A, T), (A, C), (T, T), (T, U), (T, C), (U, U)}
# One step may pipeline several commands, so compare states across a step by the closure.
REACHABLE = TRANSITIONS | {(a, c) for a, b in TRANSITIONS for b2, c in TRANSITIONS if b == b2}

AUTH_VERBS = {"USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT", "UTF8"}
TRANSACTION_VERBS = {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT", "CAPA"}
KNOWN = AUTH_VERBS | TRANSACTION_VERBS

MESSAGES: tuple[tuple[str, bytes], ...] = (
    ("m1", b"Subject: a\n\nbody\n.\n..x\n"),
    ("m2", b""),
    ("m3", b"no blank line\r\nat all"),
    ("m4", b"H: v\r\n\r\n" + b"line\r\n" * 5),
)
SNAPSHOT = [Entry(uid, wire_size(data)) for uid, data in MESSAGES]

TOO_MANY = b"-ERR Too many invalid commands, disconnecting.\r\n"
FAILURE_LINES = {
    Failure.AUTH: b"-ERR [AUTH] Authentication failed.\r\n",
    Failure.IN_USE: b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n",
    Failure.SYS_TEMP: b"-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n",
    Failure.SYS_PERM: b"-ERR [SYS/PERM] Mailbox unavailable.\r\n",
    Failure.PARTIAL_DELETE: b"-ERR [SYS/TEMP] Some marked messages were not removed.\r\n",
    Failure.REFERRAL: b"-ERR Try this server instead.\r\n",
}


# ----------------------------------------------------------------- command lines


@dataclass(frozen=True)
class Cmd:
    """A command line and what it means by construction (not by the core's parser)."""

    line: bytes
    verb: str
    syntax_ok: bool = True
    number: int | None = None
    lines: int | None = None
    text: str | None = None  # USER name, PASS password, AUTH mechanism
    initial: bytes | None = None  # AUTH initial response, as sent


@dataclass(frozen=True)
class Answers:
    """How the driver answers whatever events this step raises."""

    login_ok: bool
    login_failure: Failure
    message_ok: bool
    message_failure: Failure
    commit_ok: bool


ANSWERS = st.builds(
    Answers,
    login_ok=st.booleans(),
    login_failure=st.sampled_from(list(Failure)),
    message_ok=st.booleans(),
    message_failure=st.sampled_from(list(Failure)),
    commit_ok=st.booleans(),
)

# Any run of digits is a number (the line cap bounds it): a huge one is "no such message".
GOOD_NUMBERS = st.sampled_from(
    ["1", "2", "3", "4", "5", "0", "007", "18446744073709551616", "99999999999999999999999"]
)
BAD_NUMBERS = st.sampled_from(["-1", "abc", "1x", " ", "+2", "1 "])


def plain(authzid: bytes, authcid: bytes, password: bytes) -> bytes:
    return base64.b64encode(authzid + b"\0" + authcid + b"\0" + password)


SASL_LINES = st.sampled_from(
    [
        plain(b"", b"alice", b"secret"),
        plain(b"alice", b"alice", b"pw"),
        plain(b"", b"", b"pw"),
        base64.b64encode(b"alice\0secret"),
        base64.b64encode(b"a\0b\0c\0d"),
        b"*",
        b"",
        b"=",
        b"!!notbase64",
        b"YWJj",
        b"STAT",
    ]
)


def any_case(verb: str, draw: st.DrawFn) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(verb), max_size=len(verb)))
    return "".join(c.lower() if flip else c for c, flip in zip(verb, flips, strict=True))


ALL_VERBS = (*sorted(KNOWN), "APOP", "LAST", "XTND", "", "STA", "RETRX", "UTF8", "AUTH", "TOP")
# Mostly what the state allows, so that sessions get somewhere: DELE twice as likely.
TRANSACTION_MIX = (*sorted(TRANSACTION_VERBS - {"QUIT"}), "DELE", "DELE", "STAT", "LIST", "UIDL")
AUTHORIZATION_MIX = (*sorted(AUTH_VERBS - {"QUIT"}), "USER", "PASS", "STAT")


@st.composite
def commands(draw: st.DrawFn, verbs: tuple[str, ...] = ALL_VERBS) -> Cmd:
    verb = draw(st.sampled_from(verbs))
    sent = any_case(verb, draw)
    junk = draw(st.sampled_from(["x", "1", "1 2"]))
    if verb in {"STAT", "NOOP", "RSET", "QUIT", "CAPA", "STLS", "UTF8"}:
        if draw(st.integers(0, 5)) == 0:
            return Cmd(f"{sent} {junk}".encode(), verb, syntax_ok=False)
        return Cmd(sent.encode(), verb)
    if verb in {"LIST", "UIDL", "RETR", "DELE"}:
        how = draw(st.sampled_from(["good", "good", "good", "bad", "none"]))
        if how == "none":
            return Cmd(sent.encode(), verb, syntax_ok=verb in {"LIST", "UIDL"})
        if how == "bad":
            return Cmd(f"{sent} {draw(BAD_NUMBERS)}".encode(), verb, syntax_ok=False)
        token = draw(GOOD_NUMBERS)
        return Cmd(f"{sent} {token}".encode(), verb, number=int(token))
    if verb == "TOP":
        n, k = draw(GOOD_NUMBERS), draw(st.sampled_from(["0", "1", "2", "9"]))
        how = draw(st.sampled_from(["good", "good", "bad", "missing"]))
        if how == "missing":
            return Cmd(f"{sent} {n}".encode(), verb, syntax_ok=False)
        if how == "bad":
            return Cmd(f"{sent} {n} {draw(BAD_NUMBERS)}".encode(), verb, syntax_ok=False)
        return Cmd(f"{sent} {n} {k}".encode(), verb, number=int(n), lines=int(k))
    if verb == "USER":
        name = draw(st.sampled_from(["alice", "bob", "nobody", ""]))
        line = f"{sent} {name}" if name else sent
        return Cmd(line.encode(), verb, syntax_ok=bool(name), text=name)
    if verb == "PASS":
        password = draw(st.sampled_from(["secret", "pass word", "wrong", ""]))
        return Cmd(f"{sent} {password}".encode(), verb, text=password)
    if verb == "AUTH":
        mechanism = draw(st.sampled_from(["", "PLAIN", "plain", "CRAM-MD5"]))
        if not mechanism:
            return Cmd(sent.encode(), verb)
        initial = draw(st.one_of(st.none(), SASL_LINES.filter(bool), st.just(b"a b")))
        line = f"{sent} {mechanism}".encode() + (b" " + initial if initial is not None else b"")
        return Cmd(line, verb, syntax_ok=initial != b"a b", text=mechanism.upper(), initial=initial)
    return Cmd(sent.encode(), verb)  # unknown verbs and the empty line


# ----------------------------------------------------------------- the model


@dataclass
class Expect:
    """One reply: its status, optionally its exact first line and the un-stuffed body."""

    status: bytes  # b"+OK", b"-ERR" or b"+"
    exact: bytes | None = None
    multi: bool = False
    body: bytes | None = None


@dataclass
class Model:
    config: CoreConfig
    state: State = A
    tls: bool = False
    user: str | None = None
    sasl: bool = False
    bad: int = 0
    closed: bool = False
    deleted: set[int] = field(default_factory=set)
    caps_at_login: list[bytes] | None = None
    events: list[tuple[object, ...]] = field(default_factory=list)

    @property
    def plaintext_ok(self) -> bool:
        return self.tls or self.config.allow_plaintext

    def capabilities(self) -> list[bytes]:
        if self.caps_at_login is not None:
            return self.caps_at_login
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        caps += [b"USER", b"SASL PLAIN", b"UTF8 USER"] if self.plaintext_ok else [b"UTF8"]
        if self.config.starttls_available and not self.tls:
            caps.append(b"STLS")
        return caps

    def close(self, state: State = C) -> None:
        self.closed = True
        self.state = state

    def count_bad(self) -> bool:
        self.bad += 1
        limit = (
            self.config.max_bad_commands_before_login
            if self.state is A
            else self.config.max_bad_commands
        )
        if self.bad >= limit:
            self.close()
            return True
        return False

    def bad_reply(self) -> Expect:
        return Expect(b"-ERR", TOO_MANY) if self.count_bad() else Expect(b"-ERR")

    def login(self, username: str, answers: Answers) -> Expect:
        self.events.append(("auth", username))
        if answers.login_ok:
            self.caps_at_login = self.capabilities()
            self.state = T
            self.bad = 0
            return Expect(b"+OK", b"+OK Logged in.\r\n")
        self.user = None
        self.count_bad()
        return Expect(b"-ERR", FAILURE_LINES[answers.login_failure])

    def sasl_response(self, line: bytes, answers: Answers) -> Expect:
        self.sasl = False
        if line == b"*":
            return self.bad_reply()
        return self.plain(line, answers)

    def plain(self, b64: bytes, answers: Answers) -> Expect:
        try:
            decoded = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return self.bad_reply()
        parts = decoded.split(b"\0")
        if len(parts) != 3 or not parts[1] or any(len(p) > 255 for p in parts):
            return self.bad_reply()
        try:
            authcid = parts[1].decode()
            parts[0].decode()
            parts[2].decode()
        except UnicodeDecodeError:
            return self.bad_reply()
        return self.login(authcid, answers)

    def valid_number(self, number: int | None) -> bool:
        return number is not None and 1 <= number <= len(SNAPSHOT) and number not in self.deleted

    def predict(self, c: Cmd, answers: Answers, more_after: bool) -> Expect:
        if self.sasl:
            # The framing strips one CR before the LF, whatever the mode.
            line = c.line[:-1] if c.line.endswith(b"\r") else c.line
            return self.sasl_response(line, answers)
        if len(c.line) + 2 > self.config.line_length:
            return self.bad_reply()
        allowed = AUTH_VERBS if self.state is A else TRANSACTION_VERBS
        if c.verb not in KNOWN or c.verb not in allowed or not c.syntax_ok:
            return self.bad_reply()
        if c.verb == "CAPA":
            return Expect(
                b"+OK", multi=True, body=b"".join(x + b"\r\n" for x in self.capabilities())
            )
        if c.verb == "QUIT":
            return self.quit(answers)
        if self.state is A:
            return self.predict_authorization(c, answers, more_after)
        return self.predict_transaction(c, answers)

    def quit(self, answers: Answers) -> Expect:
        if self.state is A:
            self.close()
            return Expect(b"+OK", b"+OK Logging out.\r\n")
        self.close(U)
        if not self.deleted:
            return Expect(b"+OK", b"+OK Logging out.\r\n")
        self.events.append(("commit", tuple(SNAPSHOT[n - 1] for n in sorted(self.deleted))))
        if answers.commit_ok:
            return Expect(b"+OK", b"+OK Logging out, messages deleted.\r\n")
        return Expect(b"-ERR", FAILURE_LINES[Failure.SYS_TEMP])

    def predict_authorization(self, c: Cmd, answers: Answers, more_after: bool) -> Expect:
        match c.verb:
            case "UTF8":
                return Expect(b"+OK", b"+OK UTF8 enabled.\r\n")
            case "USER":
                if not self.plaintext_ok:
                    return self.bad_reply()
                self.user = c.text
                return Expect(b"+OK", b"+OK\r\n")
            case "PASS":
                if not self.plaintext_ok or self.user is None:
                    return self.bad_reply()
                return self.login(self.user, answers)
            case "AUTH":
                if c.text is None:
                    body = b"PLAIN\r\n" if self.plaintext_ok else b""
                    return Expect(b"+OK", b"+OK\r\n", multi=True, body=body)
                if c.text != "PLAIN" or not self.plaintext_ok:
                    return self.bad_reply()
                self.user = None
                if c.initial is None:
                    self.sasl = True
                    return Expect(b"+", b"+ \r\n")
                if c.initial == b"=":
                    return self.bad_reply()  # an empty PLAIN message is malformed
                return self.plain(c.initial, answers)
            case "STLS":
                if self.tls or not self.config.starttls_available:
                    return self.bad_reply()
                if more_after:
                    self.close()  # RFC 2595 section 4: nothing pipelined after STLS
                else:
                    self.events.append(("stls",))
                    self.tls = True
                    self.user = None
                return Expect(b"+OK", b"+OK Begin TLS negotiation now.\r\n")
        raise AssertionError(c)

    def predict_transaction(self, c: Cmd, answers: Answers) -> Expect:
        live = [(n, m) for n, m in enumerate(SNAPSHOT, 1) if n not in self.deleted]
        match c.verb:
            case "STAT":
                size = sum(m.size for _, m in live)
                return Expect(b"+OK", f"+OK {len(live)} {size}\r\n".encode())
            case "NOOP":
                return Expect(b"+OK", b"+OK\r\n")
            case "RSET":
                self.deleted.clear()
                size = sum(m.size for m in SNAPSHOT)
                text = f"+OK maildrop has {len(SNAPSHOT)} messages ({size} octets)\r\n"
                return Expect(b"+OK", text.encode())
            case "LIST" | "UIDL" if c.number is None:
                body = b"".join(
                    f"{n} {m.size if c.verb == 'LIST' else m.uid}\r\n".encode() for n, m in live
                )
                return Expect(b"+OK", multi=True, body=body)
        if not self.valid_number(c.number):
            return self.bad_reply()
        assert c.number is not None
        entry = SNAPSHOT[c.number - 1]
        match c.verb:
            case "LIST":
                return Expect(b"+OK", f"+OK {c.number} {entry.size}\r\n".encode())
            case "UIDL":
                return Expect(b"+OK", f"+OK {c.number} {entry.uid}\r\n".encode())
            case "DELE":
                self.deleted.add(c.number)
                return Expect(b"+OK", f"+OK Message {c.number} deleted.\r\n".encode())
            case "RETR" | "TOP":
                self.events.append(("retr", c.number, c.lines))
                if not answers.message_ok:
                    return Expect(b"-ERR", FAILURE_LINES[answers.message_failure])
                data = to_crlf(MESSAGES[c.number - 1][1])
                if c.lines is None:
                    return Expect(
                        b"+OK", f"+OK {entry.size} octets\r\n".encode(), True, ended(data)
                    )
                body = ended(reference_top(data, c.lines))
                return Expect(b"+OK", b"+OK Top of message follows.\r\n", True, body)
        raise AssertionError(c)


def read_reply(out: bytes, pos: int, expect: Expect) -> int:
    """Check one reply at ``pos`` against ``expect``; return where the next one starts."""
    end = out.find(b"\r\n", pos)
    assert end >= 0, (out[pos:], expect)
    first = out[pos : end + 2]
    assert first.startswith(expect.status + b" ") or first == expect.status + b"\r\n", first
    if expect.exact is not None:
        assert first == expect.exact
    pos = end + 2
    if not expect.multi:
        return pos
    start = pos
    while True:
        end = out.find(b"\r\n", pos)
        assert end >= 0, "multi-line response without terminator"
        line = out[pos:end]
        pos = end + 2
        if line == b".":
            break
    if expect.body is not None:
        assert client_unstuff(out[start:pos]) == expect.body
    return pos


# ----------------------------------------------------------------- the machine

LOGIN = [Cmd(b"USER alice", "USER", text="alice"), Cmd(b"PASS x", "PASS")]


class Pop3Session(RuleBasedStateMachine):
    """One connection to the core, driven by random command lines."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Model(CoreConfig())
        self.conn = Connection(CoreConfig())
        self.steps = 0

    @initialize(
        tls_active=st.sampled_from([False, False, True]),
        starttls_available=st.sampled_from([True, True, False]),
        allow_plaintext=st.sampled_from([True, True, False]),
        before_login=st.sampled_from([3, 10]),
        log_in=st.booleans(),
    )
    def start(
        self,
        tls_active: bool,
        starttls_available: bool,
        allow_plaintext: bool,
        before_login: int,
        log_in: bool,
    ) -> None:
        config = CoreConfig(
            tls_active=tls_active,
            starttls_available=starttls_available,
            allow_plaintext=allow_plaintext,
            max_bad_commands_before_login=before_login,
            max_bad_commands=12,
        )
        self.model = Model(config, tls=tls_active)
        self.conn = Connection(config)
        assert self.conn.data_to_send() == b"+OK POP3 server ready.\r\n"
        if log_in and self.model.plaintext_ok:
            self.exchange(LOGIN, Answers(True, Failure.AUTH, True, Failure.AUTH, True))

    # ------------------------------------------------------------- driving

    def drive(self, answers: Answers) -> list[tuple[object, ...]]:
        seen: list[tuple[object, ...]] = []
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or isinstance(event, Close):
                return seen
            match event:
                case Authenticate(username=username):
                    seen.append(("auth", username))
                    if answers.login_ok:
                        self.conn.login_succeeded(SNAPSHOT)
                    else:
                        self.conn.login_failed(answers.login_failure)
                case RetrieveMessage(number=number, message=message, top_lines=lines):
                    seen.append(("retr", number, lines))
                    assert message == SNAPSHOT[number - 1]
                    if not answers.message_ok:
                        self.conn.message_failed(answers.message_failure)
                        continue
                    self.conn.message_started()
                    data = MESSAGES[number - 1][1]
                    for i in range(0, len(data), 3):
                        if not self.conn.message_data(data[i : i + 3]):
                            break
                    self.conn.message_finished()
                case Commit(deleted=deleted):
                    seen.append(("commit", deleted))
                    if answers.commit_ok:
                        self.conn.commit_succeeded()
                    else:
                        self.conn.commit_failed(Failure.SYS_TEMP)
                case StartTls():
                    seen.append(("stls",))
                    self.conn.tls_started()
                case BadCommand() | Reset():
                    pass
                case _:
                    raise AssertionError(event)

    def exchange(self, lines: list[Cmd], answers: Answers) -> None:
        self.steps += 1
        before = self.conn.state
        expected: list[Expect] = []
        self.model.events = []
        for i, c in enumerate(lines):
            if self.model.closed:
                break
            expected.append(self.model.predict(c, answers, more_after=i < len(lines) - 1))
        self.conn.receive_data(b"".join(c.line + b"\r\n" for c in lines))
        seen = self.drive(answers)
        out = self.conn.data_to_send()
        pos = 0
        for expect in expected:
            pos = read_reply(out, pos, expect)
        assert pos == len(out), out[pos:]
        assert seen == self.model.events
        assert (before, self.conn.state) in (REACHABLE if len(lines) > 1 else TRANSITIONS)
        assert self.conn.state is self.model.state
        assert self.conn.closed == self.model.closed

    # ------------------------------------------------------------- rules

    @precondition(lambda self: not self.model.closed)
    @rule(c=commands(), answers=ANSWERS)
    def command(self, c: Cmd, answers: Answers) -> None:
        self.exchange([c], answers)

    @precondition(lambda self: not self.model.closed and not self.model.sasl)
    @rule(data=st.data(), answers=ANSWERS)
    def likely_command(self, data: st.DataObject, answers: Answers) -> None:
        mix = TRANSACTION_MIX if self.model.state is T else AUTHORIZATION_MIX
        self.exchange([data.draw(commands(mix))], answers)

    @precondition(lambda self: not self.model.closed)
    @rule(cs=st.lists(commands(), min_size=2, max_size=5), answers=ANSWERS)
    def pipelined(self, cs: list[Cmd], answers: Answers) -> None:
        self.exchange(cs, answers)

    @precondition(lambda self: not self.model.closed and self.model.state is A)
    @rule(answers=ANSWERS)
    def login(self, answers: Answers) -> None:
        # Mostly succeeds, so that TRANSACTION is reached often.
        answers = replace(answers, login_ok=answers.login_ok or answers.commit_ok)
        self.exchange(LOGIN, answers)

    @precondition(lambda self: self.model.state is A and not self.model.closed)
    @rule(after=st.lists(commands(AUTHORIZATION_MIX), max_size=2), answers=ANSWERS)
    def stls(self, after: list[Cmd], answers: Answers) -> None:
        self.exchange([Cmd(b"STLS", "STLS"), *after], answers)

    @precondition(lambda self: not self.model.closed and self.model.state is T)
    @rule(number=st.integers(1, len(MESSAGES) + 1), answers=ANSWERS)
    def dele(self, number: int, answers: Answers) -> None:
        self.exchange([Cmd(f"DELE {number}".encode(), "DELE", number=number)], answers)

    @precondition(lambda self: not self.model.closed and self.model.state is T)
    @rule(
        number=st.integers(1, len(MESSAGES)),
        lines=st.none() | st.integers(0, 7),
        answers=ANSWERS,
    )
    def retrieve(self, number: int, lines: int | None, answers: Answers) -> None:
        line = f"RETR {number}" if lines is None else f"TOP {number} {lines}"
        verb = "RETR" if lines is None else "TOP"
        self.exchange([Cmd(line.encode(), verb, number=number, lines=lines)], answers)

    @precondition(lambda self: self.model.state is T and bool(self.model.deleted))
    @rule(answers=ANSWERS)
    def quit_after_deleting(self, answers: Answers) -> None:
        self.exchange([Cmd(b"STAT", "STAT"), Cmd(b"QUIT", "QUIT")], answers)

    @precondition(lambda self: not self.model.closed and self.model.sasl)
    @rule(line=SASL_LINES, answers=ANSWERS)
    def sasl_response(self, line: bytes, answers: Answers) -> None:
        self.exchange([Cmd(line, "")], answers)

    @precondition(lambda self: not self.model.closed)
    @rule(raw=st.binary(max_size=300).filter(lambda b: b"\n" not in b), answers=ANSWERS)
    def garbage(self, raw: bytes, answers: Answers) -> None:
        seen = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            verb = seen.partition(b" ")[0].decode("ascii").upper()
        except UnicodeDecodeError:
            verb = ""
        assume(verb not in KNOWN)
        self.exchange([Cmd(raw, verb)], answers)

    @precondition(lambda self: not self.model.closed and self.steps >= 10)
    @rule()
    def eof(self) -> None:
        self.conn.receive_data(b"")
        assert isinstance(self.conn.next_event(), Close)
        assert self.conn.data_to_send() == b""
        assert self.conn.state is C
        self.model.close()

    @precondition(lambda self: self.model.closed)
    @rule(data=st.binary(max_size=20))
    def after_close(self, data: bytes) -> None:
        self.conn.receive_data(data)
        assert isinstance(self.conn.next_event(), Close)
        assert self.conn.data_to_send() == b""

    @invariant()
    def no_pending_output(self) -> None:
        assert self.conn.data_to_send() == b""


Pop3Session.TestCase.settings = settings(
    max_examples=200,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
TestPop3Session = Pop3Session.TestCase
