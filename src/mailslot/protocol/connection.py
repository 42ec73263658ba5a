"""The sans-IO POP3 session (RFC 1939, 2449, 3206, 5034, 2595, 6856), in the manner of h11.

Feed received bytes with :meth:`Connection.receive_data`, take events with
:meth:`Connection.next_event`, answer the ones that ask something of you, and send what
:meth:`Connection.data_to_send` returns.  The core owns the session: the message-number to
unique-id snapshot, delete marks, RSET and the decision to commit at QUIT.  It does no I/O, keeps
no clock and imports nothing beyond the standard library.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailslot.protocol import commands as cmd
from mailslot.protocol import responses as r
from mailslot.protocol.dotstuff import MessageEncoder
from mailslot.protocol.errors import LocalProtocolError, RemoteProtocolError
from mailslot.protocol.events import (
    NEED_DATA,
    Authenticate,
    BadCommand,
    Close,
    Commit,
    Event,
    Reset,
    RetrieveMessage,
    SnapshotEntry,
    StartTls,
)
from mailslot.protocol.framing import TOO_LONG, LineBuffer
from mailslot.protocol.sasl import (
    MECHANISMS,
    Challenge,
    Credentials,
    Mechanism,
    SaslError,
    decode_response,
)
from mailslot.protocol.state import KNOWN_VERBS, State, allowed

__all__ = ["Connection", "CoreConfig"]


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """What the core needs to know: its limits and capabilities, never the whole config."""

    tls_active: bool = False
    starttls_available: bool = False
    allow_plaintext: bool = False
    line_length: int = 255  # RFC 2449 section 4, including CRLF
    sasl_line_length: int = 8192
    max_bad_commands_before_login: int = 3
    max_bad_commands: int = 20
    greeting: str = r.GREETING
    # Dovecot's pop3_client_workarounds "outlook-no-nuls" and "oe-ns-eoh" (dotstuff.py).
    outlook_no_nuls: bool = False
    oe_ns_eoh: bool = False


_Render = Callable[[int, SnapshotEntry], str]
_RenderOne = Callable[[SnapshotEntry], str]

# Shared by every session until its first DELE: an idle session holds no set of its own.
_NONE_DELETED: frozenset[int] = frozenset()

_WAIT_NONE = 0
_WAIT_LOGIN = 1
_WAIT_MESSAGE = 2
_WAIT_COMMIT = 3
_WAIT_TLS = 4


@functools.cache
def _capability_list(plaintext: bool, stls: bool) -> tuple[bytes, ...]:
    """CAPA's lines (RFC 2449 section 6); one shared tuple per combination, not one per session."""
    caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
    if plaintext:
        caps += [b"USER", b"SASL PLAIN", b"UTF8 USER"]
    else:
        caps.append(b"UTF8")
    if stls:
        caps.append(b"STLS")
    return tuple(caps)


class Connection:
    """One POP3 session, from greeting to close."""

    # Tens of thousands of these may sit idle at once: no per-instance __dict__.
    __slots__ = (
        "_bad_commands",
        "_capabilities_at_login",
        "_close",
        "_config",
        "_deleted",
        "_deleted_size",
        "_encoder",
        "_lines",
        "_lowest_retr",
        "_messages",
        "_on_command",
        "_out",
        "_retrieving_size",
        "_retrieving_top",
        "_sasl",
        "_started",
        "_state",
        "_tls",
        "_uidl_listed",
        "_user",
        "_waiting",
        "octets_in",
        "octets_out",
        "username",
        "utf8",
    )

    def __init__(self, config: CoreConfig, on_command: Callable[[str], None] | None = None) -> None:
        """``on_command``: told each command line's verb as it is read (a known verb in
        upper case, any other as ``"unknown"``: never the client's own string)."""
        self._config = config
        self._on_command = on_command
        self._lines = LineBuffer()
        # None while nothing is queued: an idle session holds no buffer.
        self._out: bytearray | None = bytearray(r.ok(config.greeting))
        # Octets received and queued for sending so far (a logout summary's counts).
        self.octets_in = 0
        self.octets_out = len(self._out)
        self._state = State.AUTHORIZATION
        self._waiting = _WAIT_NONE
        self._tls = config.tls_active
        self._user: str | None = None
        self._sasl: Mechanism | None = None
        self._bad_commands = 0
        self._close: Close | None = None
        self._capabilities_at_login: tuple[bytes, ...] | None = None
        self._messages: Sequence[SnapshotEntry] = ()
        self._deleted: set[int] | frozenset[int] = _NONE_DELETED
        self._deleted_size = 0
        self._encoder: MessageEncoder | None = None
        self._retrieving_size = 0
        self._retrieving_top = False
        self._started = False
        # For a logout summary's %u (Dovecot's uidl_change): whether UIDL was asked, and the
        # lowest message RETR asked for.
        self._uidl_listed = False
        self._lowest_retr = 0
        self.username: str | None = None
        self.utf8 = False

    # ----------------------------------------------------------------- public state

    @property
    def state(self) -> State:
        """The RFC 1939 state; the driver picks its idle timer from it."""
        return self._state

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def closed(self) -> bool:
        return self._close is not None

    @property
    def pending_output(self) -> int:
        """Octets queued for the client (the driver flushes at its own thresholds)."""
        return 0 if self._out is None else len(self._out)

    @property
    def snapshot(self) -> Sequence[SnapshotEntry]:
        """The maildrop's messages as listed at login (empty before)."""
        return self._messages

    @property
    def delete_marks(self) -> frozenset[int]:
        """The message numbers DELE marked (and RSET did not clear)."""
        return frozenset(self._deleted)

    @property
    def uidl_listed(self) -> bool:
        """Whether UIDL (a listing or one message's) was answered."""
        return self._uidl_listed

    @property
    def lowest_retrieved(self) -> int:
        """The lowest message number RETR asked for (0: none)."""
        return self._lowest_retr

    @property
    def marked(self) -> int:
        """Messages marked deleted in this session, not yet removed (RFC 1939 section 5, DELE)."""
        return len(self._deleted)

    @property
    def buffered(self) -> int:
        """Received bytes not yet consumed as commands."""
        return len(self._lines)

    # ----------------------------------------------------------------- bytes in, bytes out

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the client; ``b""`` means the client closed its side."""
        self.octets_in += len(data)
        self._lines.feed(data)

    def data_to_send(self) -> bytes:
        """Everything queued for the client; the queue is emptied."""
        out, self._out = self._out, None
        return b"" if out is None else bytes(out)

    def _reply(self, data: bytes) -> None:
        """Queue ``data`` for the client."""
        self.octets_out += len(data)
        if self._out is None:
            self._out = bytearray(data)
        else:
            self._out += data

    # ----------------------------------------------------------------- events

    def next_event(self) -> Event:
        """Process buffered commands until one needs the outside, data runs out, or close."""
        if self._close is not None:
            return self._close
        if self._waiting != _WAIT_NONE:
            raise LocalProtocolError("an event is still waiting for its answer")
        while True:
            limit = (
                self._config.sasl_line_length
                if self._sasl is not None
                else self._config.line_length
            )
            line = self._lines.next_line(limit)
            if line is None:
                if self._lines.eof:
                    return self._closing("client closed the connection")
                return NEED_DATA
            if line is TOO_LONG:
                self._sasl = None
                return self._bad(r.LINE_TOO_LONG, "line too long")
            assert isinstance(line, bytes)
            event = self._sasl_step(line) if self._sasl is not None else self._command(line)
            if event is not None:
                return event

    # ----------------------------------------------------------------- answers: login

    def login_succeeded(self, messages: Sequence[SnapshotEntry]) -> None:
        """Credentials verified and maildrop locked: enter TRANSACTION with this snapshot."""
        self._expect(_WAIT_LOGIN)
        self._capabilities_at_login = self._capabilities()
        self._messages = messages
        self._state = State.TRANSACTION
        self._bad_commands = 0
        self._reply(r.ok(r.LOGGED_IN))

    def login_failed(self, reason: r.Failure, text: str | None = None) -> None:
        """Refuse the login with the RFC 3206 / RFC 2449 code for ``reason``, and ``text``
        instead of the standard text if given."""
        self._expect(_WAIT_LOGIN)
        self._user = None
        self.username = None
        self._reply(r.failure(reason, text))
        self._count_bad()

    # ----------------------------------------------------------------- answers: messages

    def message_started(self) -> None:
        """The message is open: queue the ``+OK`` line; data follows."""
        if self._waiting != _WAIT_MESSAGE or self._encoder is None or self._started:
            raise LocalProtocolError("no message was asked for, or it has started already")
        if self._retrieving_top:
            self._reply(r.ok("Top of message follows."))
        else:
            self._reply(r.ok(f"{self._retrieving_size} octets"))
        self._started = True

    def message_data(self, chunk: bytes) -> bool:
        """Encode a chunk of stored bytes; returns False when no more is wanted (TOP)."""
        if self._encoder is None or not self._started:
            raise LocalProtocolError("message_started() first")
        self._reply(self._encoder.encode(chunk))
        return not self._encoder.done

    def message_finished(self) -> None:
        """All data given: queue the terminator."""
        if self._encoder is None or not self._started:
            raise LocalProtocolError("message_started() first")
        self._reply(self._encoder.finish())
        self._encoder = None
        self._waiting = _WAIT_NONE

    def message_failed(self, reason: r.Failure) -> None:
        """The message could not be read.  Before any data: ``-ERR``; after: close."""
        self._expect(_WAIT_MESSAGE)
        started = self._started
        self._encoder = None
        if started:
            # A multi-line response cannot be taken back: the client must see a broken
            # connection rather than a truncated message that looks complete.
            self._closing("message could not be read completely")
        else:
            self._reply(r.failure(reason))

    # ----------------------------------------------------------------- answers: commit, TLS

    def commit_succeeded(self) -> None:
        """The deletions are durable: ``+OK`` and close (RFC 1939 section 6)."""
        self._expect(_WAIT_COMMIT)
        self._reply(r.ok(r.LOGOUT_DELETED))
        self._closing("quit")

    def commit_failed(self, reason: r.Failure) -> None:
        """The deletions failed, all or some (``PARTIAL_DELETE``): ``-ERR`` and close."""
        self._expect(_WAIT_COMMIT)
        self._reply(r.failure(reason))
        self._closing("quit, deletions failed")

    def tls_started(self) -> None:
        """The TLS handshake after STLS succeeded: forget everything said before it."""
        self._expect(_WAIT_TLS)
        self._tls = True
        self._user = None
        self.utf8 = False
        # RFC 2595 section 4 / CVE-2011-0411: nothing received in the clear is kept.
        self._lines.clear()

    # ----------------------------------------------------------------- internals

    def _expect(self, waiting: int) -> None:
        if self._waiting != waiting:
            raise LocalProtocolError("answer to an event that was not asked")
        self._waiting = _WAIT_NONE

    def _closing(self, reason: str) -> Close:
        self._close = Close(reason)
        self._state = State.CLOSED if self._state != State.UPDATE else State.UPDATE
        return self._close

    def _count_bad(self) -> bool:
        """Count a client error; True (and a close queued) when over the limit."""
        self._bad_commands += 1
        limit = (
            self._config.max_bad_commands_before_login
            if self._state == State.AUTHORIZATION
            else self._config.max_bad_commands
        )
        if self._bad_commands >= limit:
            self._closing("too many bad commands")
            return True
        return False

    def _bad(self, text: str, reason: str, code: r.Code | None = None) -> Event:
        if self._count_bad():
            self._reply(r.err(r.TOO_MANY_ERRORS))
            assert self._close is not None
            return self._close
        self._reply(r.err(text, code))
        return BadCommand(reason)

    @property
    def _plaintext_ok(self) -> bool:
        return self._tls or self._config.allow_plaintext

    def _capabilities(self) -> tuple[bytes, ...]:
        if self._capabilities_at_login is not None:
            # RFC 2449 section 5: what was announced before login is announced after it.
            return self._capabilities_at_login
        return _capability_list(
            self._plaintext_ok, self._config.starttls_available and not self._tls
        )

    def _command(self, line: bytes) -> Event | None:
        verb, rest = cmd.split_verb(line)
        known = verb in KNOWN_VERBS
        if self._on_command is not None:
            self._on_command(verb if known else "unknown")
        if not known:
            return self._bad(r.UNKNOWN_COMMAND, "unknown command")
        if not allowed(self._state, verb):
            return self._bad(r.BAD_STATE, f"{verb} not valid in {self._state.value}")
        try:
            command = cmd.parse(verb, rest)
        except RemoteProtocolError:
            return self._bad(r.BAD_ARGUMENT, f"bad arguments to {verb}")
        return self._dispatch(command)

    def _dispatch(self, command: cmd.Command) -> Event | None:
        match command:
            case cmd.Capa():
                self._reply(r.multiline(r.ok("Capability list follows."), self._capabilities()))
            case cmd.Quit():
                return self._quit()
            case cmd.Noop():
                self._reply(r.ok())
            case cmd.User(name=name):
                if not self._plaintext_ok:
                    return self._bad(r.PLAINTEXT_DISALLOWED, "USER without TLS", r.Code.AUTH)
                try:
                    # Strictly: decoded with "replace", j\xf6rg, j\xe4rg and j\xffrg were all
                    # the account j\ufffdrg.  RFC 6856 section 2 ("UTF8 USER") promises UTF-8
                    # names, nothing else; one byte string names one account.
                    self._user = name.decode("utf-8")
                except UnicodeDecodeError:
                    self._user = None
                    return self._bad(r.NAME_NOT_UTF8, "USER name not UTF-8", r.Code.AUTH)
                self._reply(r.ok())
            case cmd.Pass(password=password):
                if not self._plaintext_ok:
                    return self._bad(r.PLAINTEXT_DISALLOWED, "PASS without TLS", r.Code.AUTH)
                if self._user is None:
                    return self._bad(r.NO_USER, "PASS without USER")
                try:
                    secret = password.decode("utf-8")
                except UnicodeDecodeError:
                    # As for names: two byte strings must not be one password.
                    return self._bad(r.CREDENTIAL_NOT_UTF8, "PASS not UTF-8", r.Code.AUTH)
                return self._authenticate(Authenticate(self._user, secret))
            case cmd.Auth(mechanism=None):
                mechanisms = list(MECHANISMS) if self._plaintext_ok else []
                self._reply(r.multiline(r.ok(), [m.encode() for m in mechanisms]))
            case cmd.Auth(mechanism=mechanism, initial_response=initial):
                return self._auth(mechanism or "", initial)
            case cmd.Stls():
                return self._stls()
            case cmd.Utf8():
                self.utf8 = True
                self._reply(r.ok(r.UTF8_ENABLED))
            case cmd.Stat():
                count = len(self._messages) - len(self._deleted)
                size = sum(m.size for m in self._messages) - self._deleted_size
                self._reply(r.ok(f"{count} {size}"))
            case cmd.List(number=None):
                self._listing(lambda m: str(m.size), "scan listing follows")
            case cmd.List(number=int() as number):
                return self._single(number, lambda n, m: f"{n} {m.size}")
            case cmd.Uidl(number=None):
                self._uidl_listed = True
                self._listing(lambda m: m.uid, "unique-id listing follows")
            case cmd.Uidl(number=int() as number):
                self._uidl_listed = True
                return self._single(number, lambda n, m: f"{n} {m.uid}")
            case cmd.Retr(number=number):
                if 0 < number <= len(self._messages) and (
                    not self._lowest_retr or number < self._lowest_retr
                ):
                    self._lowest_retr = number
                return self._retrieve(number, None)
            case cmd.Top(number=number, lines=lines):
                return self._retrieve(number, lines)
            case cmd.Dele(number=number):
                error = self._check_number(number)
                if error is not None:
                    return error
                if isinstance(self._deleted, frozenset):
                    self._deleted = set()
                self._deleted.add(number)
                self._deleted_size += self._messages[number - 1].size
                self._reply(r.ok(f"Message {number} deleted."))
            case cmd.Rset():
                self._deleted = _NONE_DELETED
                self._deleted_size = 0
                size = sum(m.size for m in self._messages)
                self._reply(r.ok(f"maildrop has {len(self._messages)} messages ({size} octets)"))
                return Reset()
        return None

    # ----------------------------------------------------------------- commands

    def _quit(self) -> Event:
        if self._state == State.TRANSACTION and self._deleted:
            self._state = State.UPDATE
            self._waiting = _WAIT_COMMIT
            deleted = tuple(self._messages[n - 1] for n in sorted(self._deleted))
            return Commit(deleted)
        if self._state == State.TRANSACTION:
            self._state = State.UPDATE
        self._reply(r.ok(r.LOGOUT))
        return self._closing("quit")

    def _authenticate(self, event: Authenticate) -> Event:
        self._waiting = _WAIT_LOGIN
        self.username = event.username
        return event

    def _auth(self, mechanism: str, initial: bytes | None) -> Event | None:
        factory = MECHANISMS.get(mechanism)
        if factory is None:
            return self._bad(r.UNSUPPORTED_MECHANISM, f"AUTH {mechanism} unsupported")
        if not self._plaintext_ok:
            return self._bad(r.PLAINTEXT_DISALLOWED, "AUTH without TLS", r.Code.AUTH)
        self._sasl = factory()
        self._user = None
        response: bytes | None = None
        if initial is not None:
            # RFC 5034 section 4: "=" is an empty initial response.
            if initial == b"=":
                response = b""
            else:
                decoded = self._b64(initial)
                if decoded is None:
                    self._sasl = None
                    return self._bad(r.AUTH_MALFORMED, "bad base64 in AUTH", r.Code.AUTH)
                response = decoded
        return self._sasl_feed(response)

    def _sasl_step(self, line: bytes) -> Event | None:
        if line == b"*":
            self._sasl = None
            return self._bad(r.AUTH_CANCELLED, "AUTH cancelled")
        decoded = self._b64(line)
        if decoded is None:
            self._sasl = None
            return self._bad(r.AUTH_MALFORMED, "bad base64 in AUTH", r.Code.AUTH)
        return self._sasl_feed(decoded)

    def _sasl_feed(self, response: bytes | None) -> Event | None:
        assert self._sasl is not None
        try:
            result = self._sasl.step(response)
        except SaslError:
            self._sasl = None
            return self._bad(r.AUTH_MALFORMED, "malformed SASL message", r.Code.AUTH)
        if isinstance(result, Challenge):
            self._reply(b"+ " + base64.b64encode(result.data) + b"\r\n")
            return None
        assert isinstance(result, Credentials)
        mechanism = self._sasl.name
        self._sasl = None
        return self._authenticate(
            Authenticate(result.authcid, result.password, mechanism, result.authzid)
        )

    @staticmethod
    def _b64(data: bytes) -> bytes | None:
        try:
            return decode_response(data)
        except SaslError:
            return None

    def _stls(self) -> Event:
        if self._tls:
            return self._bad(r.TLS_ACTIVE, "STLS with TLS active")
        if not self._config.starttls_available:
            return self._bad(r.STLS_UNAVAILABLE, "STLS not offered")
        self._reply(r.ok(r.BEGIN_TLS))
        if self._lines:
            # RFC 2595 section 4: the client must wait for the reply.  Bytes that came with
            # STLS would be executed as if they had been protected (CVE-2011-0411 class).
            return self._closing("data pipelined after STLS")
        self._waiting = _WAIT_TLS
        return StartTls()

    def _check_number(self, number: int) -> Event | None:
        if number < 1 or number > len(self._messages):
            return self._bad(r.NO_SUCH_MESSAGE, "no such message")
        if number in self._deleted:
            return self._bad(r.ALREADY_DELETED, "message is deleted")
        return None

    def _single(self, number: int, render: _Render) -> Event | None:
        error = self._check_number(number)
        if error is not None:
            return error
        self._reply(r.ok(render(number, self._messages[number - 1])))
        return None

    def _listing(self, render: _RenderOne, text: str) -> None:
        deleted = self._deleted
        lines = [
            f"{n} {render(m)}".encode() for n, m in enumerate(self._messages, 1) if n not in deleted
        ]
        self._reply(r.multiline(r.ok(text), lines))

    def _retrieve(self, number: int, top_lines: int | None) -> Event:
        error = self._check_number(number)
        if error is not None:
            return error
        message = self._messages[number - 1]
        self._waiting = _WAIT_MESSAGE
        self._encoder = MessageEncoder(
            top_lines,
            no_nuls=self._config.outlook_no_nuls,
            end_of_header=self._config.oe_ns_eoh,
        )
        self._retrieving_size = message.size
        self._retrieving_top = top_lines is not None
        self._started = False
        return RetrieveMessage(number, message, top_lines)
