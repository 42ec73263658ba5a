"""Whole POP3 sessions against the sans-IO core, in memory (RFC 1939, 2449, 2595, 3206, 5034)."""

from __future__ import annotations

import pytest

from mailslot.protocol.connection import Connection, CoreConfig
from mailslot.protocol.errors import LocalProtocolError
from mailslot.protocol.events import (
    NEED_DATA,
    Authenticate,
    BadCommand,
    Close,
    Commit,
    RetrieveMessage,
    StartTls,
)
from mailslot.protocol.responses import Failure
from mailslot.protocol.state import State

from .session import (
    NO_PLAIN,
    PLAIN,
    POP3S,
    STLS_AND_PLAIN,
    STLS_OFFERED,
    Entry,
    Session,
    b64,
)

# Wire sizes of the three messages in session.MESSAGES (CRLF line ends, no stuffing).
SIZES = (55, 22, 25)
TOTAL = sum(SIZES)

CAPA_PLAIN = (
    "+OK Capability list follows.\r\n"
    "TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
    "USER\r\nSASL PLAIN\r\nUTF8 USER\r\n.\r\n"
)
CAPA_NO_PLAIN = (
    "+OK Capability list follows.\r\n"
    "TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nUTF8\r\n.\r\n"
)
CAPA_STLS_ONLY = CAPA_NO_PLAIN.replace("UTF8\r\n", "UTF8\r\nSTLS\r\n")


def logged_in(config: CoreConfig = PLAIN) -> Session:
    session = Session(config)
    session.login()
    assert session.conn.state is State.TRANSACTION
    return session


def status_lines(reply: str) -> list[str]:
    return reply.split("\r\n")[:-1]


# ----------------------------------------------------------------- greeting and CAPA


def test_greeting() -> None:
    session = Session()
    assert session.greeting == b"+OK POP3 server ready.\r\n"
    assert session.conn.state is State.AUTHORIZATION
    assert session.send(b"") == b""
    assert isinstance(session.events[-1], Close)


def test_a_quiet_session_holds_no_buffers() -> None:
    """Idle sessions number in the tens of thousands: nothing queued or received, no buffer."""
    conn = Connection(CoreConfig(allow_plaintext=True))
    assert conn.data_to_send().startswith(b"+OK")
    conn.receive_data(b"CAPA\r\nCAP")
    while conn.next_event() is not NEED_DATA:
        pass
    assert conn.pending_output > 0 and conn.buffered == 3
    assert conn.data_to_send().startswith(b"+OK Capability list")
    conn.receive_data(b"A\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().startswith(b"+OK Capability list")
    assert (conn.pending_output, conn.buffered) == (0, 0)
    assert conn._out is None and conn._lines._buffer is None
    assert conn.data_to_send() == b""


def test_capa_with_plaintext_allowed() -> None:
    assert Session(PLAIN).say("CAPA") == CAPA_PLAIN


def test_capa_without_tls_lists_no_user_or_sasl() -> None:
    reply = Session(NO_PLAIN).say("CAPA")
    assert reply == CAPA_NO_PLAIN
    assert "USER" not in reply
    assert "SASL" not in reply


def test_capa_offers_stls_when_available() -> None:
    assert Session(STLS_OFFERED).say("CAPA") == CAPA_STLS_ONLY


def test_capa_over_pop3s() -> None:
    assert Session(POP3S).say("CAPA") == CAPA_PLAIN


@pytest.mark.parametrize("config", [PLAIN, POP3S, STLS_AND_PLAIN])
def test_capa_after_login_lists_what_it_listed_before(config: CoreConfig) -> None:
    # RFC 2449 section 5: capabilities announced before login are announced after it.
    session = Session(config)
    before = session.say("CAPA")
    session.login()
    assert session.say("CAPA") == before


def test_capa_takes_no_argument() -> None:
    assert Session().say("CAPA X") == "-ERR Invalid arguments.\r\n"


# ----------------------------------------------------------------- USER / PASS


def test_user_pass_login() -> None:
    session = Session()
    assert session.say("USER alice") == "+OK\r\n"
    assert session.say("PASS secret") == "+OK Logged in.\r\n"
    assert session.conn.state is State.TRANSACTION
    [auth] = session.of_type(Authenticate)
    assert auth == Authenticate("alice", "secret", "USER", None)
    assert session.conn.username == "alice"


def test_password_may_contain_spaces() -> None:
    session = Session()
    session.login("bob")
    [auth] = session.of_type(Authenticate)
    assert isinstance(auth, Authenticate)
    assert auth.password == "pass word"


def test_password_never_in_repr() -> None:
    session = Session()
    session.say("USER alice")
    session.say("PASS hunter2-very-secret")
    [auth] = session.of_type(Authenticate)
    assert "hunter2" not in repr(auth)
    assert "hunter2" not in str(auth)
    assert "alice" in repr(auth)


def test_password_never_in_repr_for_sasl() -> None:
    session = Session()
    session.say("AUTH PLAIN " + b64(b"\x00alice\x00hunter2-sasl"))
    [auth] = session.of_type(Authenticate)
    assert "hunter2" not in repr(auth)


@pytest.mark.parametrize("name", [b"j\xf6rg", b"j\xe4rg", b"j\xffrg", b"\xc3", b"\xed\xa0\x80"])
def test_user_names_that_are_not_utf8_are_refused(name: bytes) -> None:
    """Decoded with "replace", j\\xf6rg, j\\xe4rg and j\\xffrg were all j\\ufffdrg."""
    session = Session(accounts={"j\ufffdrg": "secret"})
    reply = session.send(b"USER " + name + b"\r\n")
    assert reply == b"-ERR [AUTH] User name is not valid UTF-8.\r\n"
    assert session.say("PASS secret").startswith("-ERR No user name given")
    assert session.of_type(Authenticate) == []
    assert session.conn.state is State.AUTHORIZATION


def test_a_bad_user_name_forgets_the_good_one_before_it() -> None:
    session = Session()
    assert session.say("USER alice") == "+OK\r\n"
    assert session.send(b"USER \xff\r\n").startswith(b"-ERR [AUTH]")
    assert session.say("PASS secret").startswith("-ERR No user name given")
    assert session.of_type(Authenticate) == []


def test_passwords_that_are_not_utf8_are_refused_unchecked() -> None:
    session = Session()
    assert session.say("USER alice") == "+OK\r\n"
    reply = session.send(b"PASS s\xe9cret\r\n")
    assert reply == b"-ERR [AUTH] Password is not valid UTF-8.\r\n"
    assert session.of_type(Authenticate) == []


@pytest.mark.parametrize(
    "response", [b"\x00j\xf6rg\x00secret", b"j\xe4rg\x00alice\x00secret", b"\x00alice\x00s\xe9"]
)
def test_sasl_plain_fields_that_are_not_utf8_are_refused(response: bytes) -> None:
    session = Session(accounts={"j\ufffdrg": "secret", "alice": "secret"})
    reply = session.say("AUTH PLAIN " + b64(response))
    assert reply.startswith("-ERR [AUTH]")
    assert session.of_type(Authenticate) == []


def test_pass_without_user() -> None:
    session = Session()
    assert session.say("PASS secret") == "-ERR No user name given; send USER first.\r\n"
    assert session.conn.state is State.AUTHORIZATION
    assert session.of_type(Authenticate) == []


def test_user_without_name() -> None:
    assert Session().say("USER") == "-ERR Invalid arguments.\r\n"


def test_wrong_password_then_user_forgotten() -> None:
    session = Session()
    session.say("USER alice")
    assert session.say("PASS wrong") == "-ERR [AUTH] Authentication failed.\r\n"
    assert session.conn.state is State.AUTHORIZATION
    assert session.conn.username is None
    assert session.say("PASS secret").startswith("-ERR No user name")
    session.login()


@pytest.mark.parametrize(
    ("failure", "reply"),
    [
        (Failure.AUTH, "-ERR [AUTH] Authentication failed.\r\n"),
        (Failure.IN_USE, "-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"),
        (Failure.SYS_TEMP, "-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n"),
        (Failure.SYS_PERM, "-ERR [SYS/PERM] Mailbox unavailable.\r\n"),
    ],
)
def test_login_failed_codes(failure: Failure, reply: str) -> None:
    session = Session(login_failure=failure)
    session.say("USER alice")
    assert session.say("PASS secret") == reply
    assert session.conn.state is State.AUTHORIZATION
    assert not session.conn.closed


@pytest.mark.parametrize("line", ["USER alice", "PASS secret", "AUTH PLAIN", "AUTH PLAIN AGFiAGM="])
def test_plaintext_refused_without_tls(line: str) -> None:
    session = Session(NO_PLAIN)
    assert session.say(line).startswith("-ERR [AUTH] Plaintext authentication disallowed")
    assert session.of_type(Authenticate) == []
    assert session.conn.state is State.AUTHORIZATION
    assert session.say("CAPA") == CAPA_NO_PLAIN


def test_auth_without_mechanism_lists_nothing_without_tls() -> None:
    assert Session(NO_PLAIN).say("AUTH") == "+OK\r\n.\r\n"


def test_user_after_login_is_wrong_state() -> None:
    session = logged_in()
    for line in ("USER bob", "PASS x", "AUTH PLAIN", "AUTH", "STLS", "UTF8"):
        assert session.say(line) == "-ERR Command not valid in this state.\r\n"
    assert session.conn.state is State.TRANSACTION


@pytest.mark.parametrize("line", ["STAT", "LIST", "UIDL", "RETR 1", "TOP 1 1", "DELE 1", "NOOP"])
def test_transaction_commands_before_login(line: str) -> None:
    session = Session(CoreConfig(allow_plaintext=True, max_bad_commands_before_login=10))
    assert session.say(line) == "-ERR Command not valid in this state.\r\n"
    assert session.conn.state is State.AUTHORIZATION


def test_rset_before_login_is_wrong_state() -> None:
    assert Session().say("RSET") == "-ERR Command not valid in this state.\r\n"


def test_unknown_command() -> None:
    session = logged_in()
    assert session.say("XYZZY") == "-ERR Unknown command.\r\n"
    assert session.say("") == "-ERR Unknown command.\r\n"
    assert session.say("\xe9TAT") == "-ERR Unknown command.\r\n"
    assert isinstance(session.events[-2], BadCommand)


# ----------------------------------------------------------------- TRANSACTION commands


def test_stat() -> None:
    assert logged_in().say("STAT") == f"+OK 3 {TOTAL}\r\n"


def test_stat_empty_maildrop() -> None:
    session = Session(messages=())
    session.login()
    assert session.say("STAT") == "+OK 0 0\r\n"
    assert session.say("LIST") == "+OK scan listing follows\r\n.\r\n"
    assert session.say("UIDL") == "+OK unique-id listing follows\r\n.\r\n"
    assert session.say("LIST 1") == "-ERR No such message.\r\n"


def test_list() -> None:
    assert logged_in().say("LIST") == (
        f"+OK scan listing follows\r\n1 {SIZES[0]}\r\n2 {SIZES[1]}\r\n3 {SIZES[2]}\r\n.\r\n"
    )


def test_list_one() -> None:
    session = logged_in()
    assert session.say("LIST 2") == f"+OK 2 {SIZES[1]}\r\n"
    assert session.say("LIST 3") == f"+OK 3 {SIZES[2]}\r\n"


def test_uidl() -> None:
    assert logged_in().say("UIDL") == (
        "+OK unique-id listing follows\r\n1 uid-one\r\n2 uid-two\r\n3 uid-three\r\n.\r\n"
    )


def test_uidl_one() -> None:
    assert logged_in().say("UIDL 3") == "+OK 3 uid-three\r\n"


def test_retr_lf_message_with_dot_line() -> None:
    session = logged_in()
    assert session.say("RETR 1") == (
        f"+OK {SIZES[0]} octets\r\n"
        "From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n..dot line\r\n.\r\n"
    )
    [retrieve] = session.of_type(RetrieveMessage)
    assert retrieve == RetrieveMessage(1, Entry("uid-one", SIZES[0]), None)


def test_retr_crlf_message() -> None:
    assert (
        logged_in().say("RETR 2") == f"+OK {SIZES[1]} octets\r\nSubject: two\r\n\r\nbody\r\n.\r\n"
    )


def test_retr_message_without_final_newline() -> None:
    assert logged_in().say("RETR 3") == (
        f"+OK {SIZES[2]} octets\r\nSubject: three\r\n\r\nx\r\ny\r\nz\r\n.\r\n"
    )


@pytest.mark.parametrize(
    ("lines", "body"),
    [(0, ""), (1, "x\r\n"), (2, "x\r\ny\r\n"), (3, "x\r\ny\r\nz\r\n"), (100, "x\r\ny\r\nz\r\n")],
)
def test_top(lines: int, body: str) -> None:
    session = logged_in()
    assert session.say(f"TOP 3 {lines}") == (
        f"+OK Top of message follows.\r\nSubject: three\r\n\r\n{body}.\r\n"
    )
    [retrieve] = session.of_type(RetrieveMessage)
    assert isinstance(retrieve, RetrieveMessage)
    assert retrieve.top_lines == lines


def test_top_stops_asking_for_data() -> None:
    session = logged_in()
    session.conn.receive_data(b"TOP 1 0\r\n")
    event = session.conn.next_event()
    assert isinstance(event, RetrieveMessage)
    session.conn.message_started()
    assert session.conn.message_data(b"Subject: x\n") is True
    assert session.conn.message_data(b"\nbody\n") is False
    session.conn.message_finished()
    assert session.conn.data_to_send() == (
        b"+OK Top of message follows.\r\nSubject: x\r\n\r\n.\r\n"
    )


def test_noop() -> None:
    assert logged_in().say("NOOP") == "+OK\r\n"


def test_dele_hides_message_everywhere() -> None:
    session = logged_in()
    assert session.say("DELE 2") == "+OK Message 2 deleted.\r\n"
    assert session.say("STAT") == f"+OK 2 {SIZES[0] + SIZES[2]}\r\n"
    assert session.say("LIST") == (
        f"+OK scan listing follows\r\n1 {SIZES[0]}\r\n3 {SIZES[2]}\r\n.\r\n"
    )
    assert (
        session.say("UIDL") == "+OK unique-id listing follows\r\n1 uid-one\r\n3 uid-three\r\n.\r\n"
    )
    for line in ("LIST 2", "UIDL 2", "RETR 2", "TOP 2 0", "DELE 2"):
        assert session.say(line) == "-ERR Message is deleted.\r\n", line
    assert session.of_type(RetrieveMessage) == []
    assert session.of_type(Commit) == []


def test_rset_undeletes() -> None:
    session = logged_in()
    session.say("DELE 1")
    session.say("DELE 3")
    assert session.say("RSET") == f"+OK maildrop has 3 messages ({TOTAL} octets)\r\n"
    assert session.say("STAT") == f"+OK 3 {TOTAL}\r\n"
    assert session.say("QUIT") == "+OK Logging out.\r\n"
    assert session.commits == []


@pytest.mark.parametrize("verb", ["STAT", "LIST", "UIDL", "RETR 1", "DELE 1", "TOP 1 0", "NOOP"])
def test_verbs_are_case_insensitive(verb: str) -> None:
    upper = logged_in().say(verb)
    lower = logged_in().say(verb.lower())
    mixed = logged_in().say(verb.capitalize())
    assert upper.startswith("+OK")
    assert upper == lower == mixed


def test_login_verbs_are_case_insensitive() -> None:
    session = Session()
    assert session.say("user alice") == "+OK\r\n"
    assert session.say("pAsS secret") == "+OK Logged in.\r\n"
    other = Session()
    assert other.say("auth plain " + b64(b"\x00alice\x00secret")) == "+OK Logged in.\r\n"


BAD_NUMBERS = [
    "0",
    "-1",
    "abc",
    "1.0",
    "+1",
    "4",
    "18446744073709551616",  # 2^64
    "99999999999999999999999",
    "1 2",
    " 1",
    "\x001",
]


@pytest.mark.parametrize("number", BAD_NUMBERS)
@pytest.mark.parametrize("verb", ["LIST", "UIDL", "RETR", "DELE", "TOP"])
def test_bad_message_numbers_get_err_and_session_goes_on(verb: str, number: str) -> None:
    session = logged_in()
    line = f"{verb} {number} 1" if verb == "TOP" else f"{verb} {number}"
    assert session.say(line).startswith("-ERR ")
    assert isinstance(session.events[-2], BadCommand)
    assert session.of_type(RetrieveMessage) == []
    assert session.conn.state is State.TRANSACTION
    assert session.say("STAT") == f"+OK 3 {TOTAL}\r\n"


@pytest.mark.parametrize(
    "line", ["RETR", "DELE", "TOP", "TOP 1", "TOP 1 -1", "TOP 1 x", "TOP 1 2 3"]
)
def test_missing_or_bad_arguments(line: str) -> None:
    session = logged_in()
    assert session.say(line) == "-ERR Invalid arguments.\r\n"
    assert session.say("NOOP") == "+OK\r\n"


@pytest.mark.parametrize("number", ["4", "18446744073709551616", "0"])
def test_numbers_past_the_end_are_no_such_message(number: str) -> None:
    assert logged_in().say(f"RETR {number}") == "-ERR No such message.\r\n"


@pytest.mark.parametrize("line", ["STAT 1", "NOOP x", "RSET 1", "QUIT now"])
def test_no_argument_commands_refuse_arguments(line: str) -> None:
    session = logged_in()
    assert session.say(line) == "-ERR Invalid arguments.\r\n"
    assert not session.conn.closed


# ----------------------------------------------------------------- QUIT and UPDATE


def test_quit_in_authorization_does_not_commit() -> None:
    session = Session()
    session.say("USER alice")
    assert session.say("QUIT") == "+OK Logging out.\r\n"
    assert isinstance(session.events[-1], Close)
    assert session.conn.state is State.CLOSED
    assert session.of_type(Commit) == []


def test_quit_in_transaction_without_deletions() -> None:
    session = logged_in()
    assert session.say("QUIT") == "+OK Logging out.\r\n"
    assert session.conn.state is State.UPDATE
    assert session.conn.closed
    assert session.of_type(Commit) == []


def test_quit_commits_deletions_in_number_order() -> None:
    session = logged_in()
    session.say("DELE 3")
    session.say("DELE 1")
    assert session.say("QUIT") == "+OK Logging out, messages deleted.\r\n"
    assert session.commits == [(Entry("uid-one", SIZES[0]), Entry("uid-three", SIZES[2]))]
    assert session.conn.state is State.UPDATE
    assert isinstance(session.events[-1], Close)


def test_commit_failed() -> None:
    session = logged_in()
    session.commit_failure = Failure.SYS_TEMP
    session.say("DELE 1")
    assert session.say("QUIT") == "-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n"
    assert session.conn.closed
    assert isinstance(session.events[-1], Close)


def test_commit_that_removed_only_some_says_so() -> None:
    session = logged_in()
    session.commit_failure = Failure.PARTIAL_DELETE
    session.say("DELE 1")
    session.say("DELE 2")
    assert session.say("QUIT") == "-ERR [SYS/TEMP] Some marked messages were not removed.\r\n"
    assert session.conn.closed
    assert isinstance(session.events[-1], Close)


def test_eof_in_transaction_closes_without_commit() -> None:
    session = logged_in()
    session.say("DELE 1")
    assert session.send(b"") == b""
    assert isinstance(session.events[-1], Close)
    assert session.of_type(Commit) == []
    assert session.conn.state is State.CLOSED


def test_eof_with_partial_quit_does_not_commit() -> None:
    session = logged_in()
    session.say("DELE 1")
    session.send(b"QUI")
    session.send(b"")
    assert session.of_type(Commit) == []
    assert session.conn.closed


def test_closed_connection_keeps_returning_close() -> None:
    session = Session()
    session.say("QUIT")
    session.conn.receive_data(b"CAPA\r\n")
    assert isinstance(session.conn.next_event(), Close)
    assert session.conn.data_to_send() == b""


# ----------------------------------------------------------------- bad-command limits


def test_three_bad_commands_before_login_close() -> None:
    session = Session()
    assert session.say("BOGUS") == "-ERR Unknown command.\r\n"
    assert session.say("STAT") == "-ERR Command not valid in this state.\r\n"
    assert session.say("BOGUS") == "-ERR Too many invalid commands, disconnecting.\r\n"
    assert isinstance(session.events[-1], Close)
    assert session.conn.state is State.CLOSED


def test_failed_logins_count_as_bad_commands() -> None:
    session = Session()
    for _ in range(3):
        session.say("USER alice")
        assert session.say("PASS wrong") == "-ERR [AUTH] Authentication failed.\r\n"
    assert session.conn.closed


def test_twenty_bad_commands_after_login_close() -> None:
    session = Session()
    session.say("BOGUS")
    session.say("BOGUS")
    session.login()  # the count starts again after login
    for _ in range(19):
        assert session.say("BOGUS") == "-ERR Unknown command.\r\n"
        assert not session.conn.closed
    assert session.say("RETR 99") == "-ERR Too many invalid commands, disconnecting.\r\n"
    assert session.conn.closed
    assert session.conn.state is State.CLOSED
    assert session.of_type(Commit) == []


def test_bad_commands_in_one_packet_stop_at_the_limit() -> None:
    session = Session()
    out = session.send(b"A\r\nB\r\nC\r\nD\r\nE\r\n")
    assert out == (
        b"-ERR Unknown command.\r\n-ERR Unknown command.\r\n"
        b"-ERR Too many invalid commands, disconnecting.\r\n"
    )


def test_line_too_long_gets_err_and_session_goes_on() -> None:
    session = logged_in()
    assert session.send(b"NOOP " + b"x" * 300 + b"\r\nNOOP\r\n") == (
        b"-ERR Command line too long.\r\n+OK\r\n"
    )


def test_253_octet_command_is_read() -> None:
    session = Session()
    name = "a" * (253 - len("USER "))
    assert session.say(f"USER {name}") == "+OK\r\n"
    assert session.say(f"USER {name}a") == "-ERR Command line too long.\r\n"


# ----------------------------------------------------------------- AUTH PLAIN (RFC 5034)


def test_auth_lists_plain() -> None:
    assert Session().say("AUTH") == "+OK\r\nPLAIN\r\n.\r\n"


def test_auth_plain_initial_response() -> None:
    session = Session()
    assert session.say("AUTH PLAIN " + b64(b"\x00alice\x00secret")) == "+OK Logged in.\r\n"
    [auth] = session.of_type(Authenticate)
    assert auth == Authenticate("alice", "secret", "PLAIN", None)


def test_auth_plain_with_authzid() -> None:
    session = Session()
    session.say("AUTH PLAIN " + b64(b"alice\x00alice\x00secret"))
    [auth] = session.of_type(Authenticate)
    assert isinstance(auth, Authenticate)
    assert auth.authzid == "alice"


def test_auth_plain_continuation() -> None:
    session = Session()
    assert session.say("AUTH PLAIN") == "+ \r\n"
    assert session.conn.state is State.AUTHORIZATION
    assert session.say(b64(b"\x00alice\x00secret")) == "+OK Logged in.\r\n"
    assert session.conn.state is State.TRANSACTION


def test_auth_plain_continuation_longer_than_command_cap() -> None:
    # RFC 5034 section 4: SASL lines are not bound by the 255-octet command limit.
    session = Session()
    session.accounts["alice"] = "p" * 200
    response = b64(b"z" * 100 + b"\x00alice\x00" + b"p" * 200)
    assert len(response) > 255
    assert session.say("AUTH PLAIN") == "+ \r\n"
    assert session.say(response) == "+OK Logged in.\r\n"


def test_auth_plain_empty_initial_response_is_malformed_for_plain() -> None:
    session = Session()
    assert session.say("AUTH PLAIN =") == "-ERR [AUTH] Invalid base64 or SASL message.\r\n"
    assert session.say("CAPA") == CAPA_PLAIN


def test_auth_cancel() -> None:
    session = Session()
    session.say("AUTH PLAIN")
    assert session.say("*") == "-ERR Authentication cancelled.\r\n"
    assert session.of_type(Authenticate) == []
    # The next line is a command again, not a SASL response.
    assert session.say("CAPA") == CAPA_PLAIN


@pytest.mark.parametrize("initial", [True, False])
def test_auth_bad_base64(initial: bool) -> None:
    session = Session()
    if initial:
        reply = session.say("AUTH PLAIN !!!notbase64")
    else:
        session.say("AUTH PLAIN")
        reply = session.say("!!!notbase64")
    assert reply == "-ERR [AUTH] Invalid base64 or SASL message.\r\n"
    assert session.say("CAPA") == CAPA_PLAIN


# Found by fuzz/fuzz_sasl.py: base64 that is not the one encoding of any octets (RFC 4648
# section 3.3 extra padding, section 3.5 non-zero pad bits) was decoded as if it were.
@pytest.mark.parametrize(
    "response",
    [
        "AGFsaWNlAHNlY3JldCEh=",  # b64(b"\0alice\0secret!!") with a "=" where none belongs
        "AGFsaWNlAHNlY3JldB==",  # b64(b"\0alice\0secret") is "...dA==": pad bits not zero
    ],
)
@pytest.mark.parametrize("initial", [True, False])
def test_auth_non_canonical_base64_is_malformed(response: str, initial: bool) -> None:
    session = Session()
    if initial:
        reply = session.say("AUTH PLAIN " + response)
    else:
        session.say("AUTH PLAIN")
        reply = session.say(response)
    assert reply == "-ERR [AUTH] Invalid base64 or SASL message.\r\n"
    assert session.of_type(Authenticate) == []


@pytest.mark.parametrize(
    "payload", [b"alice\x00secret", b"\x00alice\x00secret\x00x", b"", b"\x00\x00secret"]
)
def test_auth_plain_wrong_field_count_or_empty_authcid(payload: bytes) -> None:
    session = Session()
    session.say("AUTH PLAIN")
    assert session.say(b64(payload)) == "-ERR [AUTH] Invalid base64 or SASL message.\r\n"
    assert session.of_type(Authenticate) == []
    assert session.conn.state is State.AUTHORIZATION


def test_auth_plain_wrong_password() -> None:
    session = Session()
    assert session.say("AUTH PLAIN " + b64(b"\x00alice\x00nope")) == (
        "-ERR [AUTH] Authentication failed.\r\n"
    )


def test_auth_unknown_mechanism() -> None:
    session = Session()
    assert session.say("AUTH CRAM-MD5") == "-ERR Unsupported authentication mechanism.\r\n"
    assert session.say("CAPA") == CAPA_PLAIN


def test_auth_too_many_arguments() -> None:
    assert Session().say("AUTH PLAIN a b") == "-ERR Invalid arguments.\r\n"


# ----------------------------------------------------------------- STLS (RFC 2595)


def test_stls_then_tls_started() -> None:
    session = Session(STLS_OFFERED)
    session.conn.receive_data(b"STLS\r\n")
    event = session.conn.next_event()
    assert isinstance(event, StartTls)
    assert session.conn.data_to_send() == b"+OK Begin TLS negotiation now.\r\n"
    assert session.conn.state is State.AUTHORIZATION
    with pytest.raises(LocalProtocolError):
        session.conn.next_event()
    session.conn.tls_started()
    assert session.conn.tls_active
    assert session.conn.next_event() is NEED_DATA
    assert session.say("CAPA") == CAPA_PLAIN  # USER and SASL now, no STLS
    assert session.say("STLS") == "-ERR TLS is already active.\r\n"
    session.login()


def test_stls_forgets_user() -> None:
    session = Session(STLS_AND_PLAIN)
    assert session.say("USER alice") == "+OK\r\n"
    assert session.say("STLS") == "+OK Begin TLS negotiation now.\r\n"
    assert session.say("PASS secret") == "-ERR No user name given; send USER first.\r\n"
    assert session.of_type(Authenticate) == []


def test_bytes_pipelined_after_stls_close_the_connection() -> None:
    session = Session(STLS_AND_PLAIN)
    out = session.send(b"STLS\r\nUSER alice\r\nPASS secret\r\n")
    assert out == b"+OK Begin TLS negotiation now.\r\n"
    assert isinstance(session.events[-1], Close)
    assert session.of_type(StartTls) == []
    assert session.of_type(Authenticate) == []
    assert session.conn.closed


def test_partial_line_pipelined_after_stls_closes_too() -> None:
    session = Session(STLS_OFFERED)
    session.send(b"STLS\r\nCA")
    assert session.of_type(StartTls) == []
    assert session.conn.closed


def test_plaintext_bytes_received_before_handshake_are_dropped() -> None:
    session = Session(STLS_AND_PLAIN)
    session.conn.receive_data(b"STLS\r\n")
    assert isinstance(session.conn.next_event(), StartTls)
    session.conn.receive_data(b"USER mallory\r\n")  # arrived in the clear, late
    session.conn.tls_started()
    assert session.conn.buffered == 0
    assert session.conn.next_event() is NEED_DATA
    assert session.conn.data_to_send() == b"+OK Begin TLS negotiation now.\r\n"
    assert session.say("PASS secret").startswith("-ERR No user name")


def test_stls_not_offered() -> None:
    session = Session(PLAIN)
    assert "STLS" not in session.say("CAPA")
    assert session.say("STLS") == "-ERR STLS is not available on this connection.\r\n"
    assert session.of_type(StartTls) == []


def test_stls_over_pop3s() -> None:
    assert Session(POP3S).say("STLS") == "-ERR TLS is already active.\r\n"


def test_stls_after_login_is_wrong_state() -> None:
    session = Session(STLS_AND_PLAIN)
    session.login()
    assert session.say("STLS") == "-ERR Command not valid in this state.\r\n"


# ----------------------------------------------------------------- messages that fail


def test_message_failed_before_start() -> None:
    session = logged_in()
    session.message_failure = Failure.SYS_TEMP
    assert session.say("RETR 1") == "-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n"
    assert not session.conn.closed
    session.message_failure = None
    assert session.say("RETR 2").startswith("+OK 22 octets\r\n")


def test_message_failed_after_start_closes() -> None:
    session = logged_in()
    session.conn.receive_data(b"RETR 1\r\nNOOP\r\n")
    assert isinstance(session.conn.next_event(), RetrieveMessage)
    session.conn.message_started()
    session.conn.message_data(b"Subject: x\n")
    session.conn.message_failed(Failure.SYS_TEMP)
    assert isinstance(session.conn.next_event(), Close)
    out = session.conn.data_to_send()
    assert out == b"+OK 55 octets\r\nSubject: x\r\n"  # no terminator, no NOOP reply
    assert session.conn.closed


def test_message_failed_after_start_state_is_closed() -> None:
    session = logged_in()
    session.conn.receive_data(b"RETR 1\r\n")
    session.conn.next_event()
    session.conn.message_started()
    session.conn.message_failed(Failure.SYS_TEMP)
    assert session.conn.closed
    assert session.conn.state is State.CLOSED


# ----------------------------------------------------------------- pipelining (RFC 2449)


def test_pipelined_commands_answered_in_order() -> None:
    session = Session()
    out = session.send(
        b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST 2\r\nUIDL 1\r\nRETR 2\r\n"
        b"DELE 2\r\nBOGUS\r\nNOOP\r\nSTAT\r\nQUIT\r\n"
    )
    assert out == (
        b"+OK\r\n+OK Logged in.\r\n"
        b"+OK 3 102\r\n+OK 2 22\r\n+OK 1 uid-one\r\n"
        b"+OK 22 octets\r\nSubject: two\r\n\r\nbody\r\n.\r\n"
        b"+OK Message 2 deleted.\r\n-ERR Unknown command.\r\n+OK\r\n+OK 2 80\r\n"
        b"+OK Logging out, messages deleted.\r\n"
    )
    assert session.commits == [(Entry("uid-two", 22),)]


def test_pipelined_commands_split_byte_by_byte() -> None:
    whole = Session()
    stream = b"USER alice\r\nPASS secret\r\nLIST\r\nRETR 1\r\nTOP 3 1\r\nQUIT\r\n"
    expected = whole.send(stream)
    session = Session()
    out = b"".join(session.send(stream[i : i + 1]) for i in range(len(stream)))
    assert out == expected


def test_no_command_is_read_while_an_event_waits() -> None:
    session = Session()
    session.conn.receive_data(b"USER alice\r\nPASS secret\r\nSTAT\r\n")
    event = session.conn.next_event()
    assert isinstance(event, Authenticate)
    assert session.conn.data_to_send() == b"+OK\r\n"
    with pytest.raises(LocalProtocolError):
        session.conn.next_event()
    session.conn.login_succeeded(session.snapshot)
    assert session.conn.next_event() is NEED_DATA
    assert session.conn.data_to_send() == b"+OK Logged in.\r\n+OK 3 102\r\n"


# ----------------------------------------------------------------- driver misuse


def fresh() -> Connection:
    conn = Connection(PLAIN)
    conn.data_to_send()
    return conn


def test_answers_without_an_event_raise() -> None:
    conn = fresh()
    with pytest.raises(LocalProtocolError):
        conn.login_succeeded([])
    with pytest.raises(LocalProtocolError):
        conn.login_failed(Failure.AUTH)
    with pytest.raises(LocalProtocolError):
        conn.message_started()
    with pytest.raises(LocalProtocolError):
        conn.message_data(b"x")
    with pytest.raises(LocalProtocolError):
        conn.message_finished()
    with pytest.raises(LocalProtocolError):
        conn.message_failed(Failure.SYS_TEMP)
    with pytest.raises(LocalProtocolError):
        conn.commit_succeeded()
    with pytest.raises(LocalProtocolError):
        conn.commit_failed(Failure.SYS_TEMP)
    with pytest.raises(LocalProtocolError):
        conn.tls_started()
    assert conn.data_to_send() == b""


def test_answering_the_wrong_event_raises() -> None:
    conn = fresh()
    conn.receive_data(b"USER alice\r\nPASS secret\r\n")
    assert isinstance(conn.next_event(), Authenticate)
    with pytest.raises(LocalProtocolError):
        conn.message_started()
    with pytest.raises(LocalProtocolError):
        conn.commit_succeeded()
    with pytest.raises(LocalProtocolError):
        conn.tls_started()
    conn.login_succeeded([Entry("u", 3)])
    with pytest.raises(LocalProtocolError):
        conn.login_succeeded([])

    conn.receive_data(b"RETR 1\r\n")
    assert isinstance(conn.next_event(), RetrieveMessage)
    with pytest.raises(LocalProtocolError):
        conn.message_data(b"x")  # before message_started
    with pytest.raises(LocalProtocolError):
        conn.login_failed(Failure.AUTH)
    with pytest.raises(LocalProtocolError):
        conn.commit_failed(Failure.AUTH)
    conn.message_started()
    conn.message_data(b"x\n")
    conn.message_finished()
    with pytest.raises(LocalProtocolError):
        conn.message_data(b"more")
    with pytest.raises(LocalProtocolError):
        conn.message_finished()
    with pytest.raises(LocalProtocolError):
        conn.message_failed(Failure.SYS_TEMP)
    assert conn.next_event() is NEED_DATA

    conn.receive_data(b"DELE 1\r\nQUIT\r\n")
    assert isinstance(conn.next_event(), Commit)
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.message_started()
    conn.commit_succeeded()
    with pytest.raises(LocalProtocolError):
        conn.commit_succeeded()


def test_message_started_twice_raises() -> None:
    conn = fresh()
    conn.receive_data(b"USER alice\r\nPASS secret\r\n")
    conn.next_event()
    conn.login_succeeded([Entry("u", 3)])
    conn.receive_data(b"RETR 1\r\n")
    assert isinstance(conn.next_event(), RetrieveMessage)
    conn.message_started()
    with pytest.raises(LocalProtocolError):
        conn.message_started()


# ----------------------------------------------------------------- UTF8 (RFC 6856)


def test_utf8() -> None:
    session = Session()
    assert session.say("UTF8") == "+OK UTF8 enabled.\r\n"
    assert session.conn.utf8
