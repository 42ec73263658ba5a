"""CPython's poplib against mailslot over real sockets: POP3S (RFC 8314) and STLS (RFC 2595).

Every RETR and TOP is compared byte for byte with what RFC 1939 section 3 makes of the
file on disk; both through poplib (which un-stuffs and strips line ends) and through the
literal client, which sees the exact octets on the wire.
"""

from __future__ import annotations

import base64
import poplib

import pytest
from tests.support.maildir import message_files, top_lines, top_wire
from tests.support.popclient import MODES, Corpus, pop3_connect, pop3_login
from tests.support.server import MailslotServer
from tests.support.wire import Pop3Wire


def _tls_wire(server: MailslotServer, mode: str) -> Pop3Wire:
    context = server.tls_files.client_context()
    if mode == "implicit":
        host, port = server.implicit
        return Pop3Wire(host, port, tls_context=context)
    host, port = server.starttls
    wire = Pop3Wire(host, port)
    assert wire.command("STLS").startswith(b"+OK")
    wire.start_tls(context)
    return wire


@pytest.mark.parametrize("mode", MODES)
def test_stat_list_uidl_retr_every_message(corpus: Corpus, mode: str) -> None:
    client = pop3_login(corpus.server, mode)
    expected_sizes = [m.size for m in corpus.messages]
    assert client.stat() == (len(corpus.messages), sum(expected_sizes))
    _, listing, _ = client.list()
    assert listing == [b"%d %d" % (n, size) for n, size in enumerate(expected_sizes, 1)]
    for n, size in enumerate(expected_sizes, 1):
        assert client.list(n) == b"+OK %d %d" % (n, size)
    _, uidls, _ = client.uidl()
    assert uidls == [b"%d %s" % (n, m.base.encode()) for n, m in enumerate(corpus.messages, 1)]
    for n, message in enumerate(corpus.messages, 1):
        assert client.uidl(n) == b"+OK %d %s" % (n, message.base.encode())
        _, lines, _ = client.retr(n)
        assert lines == message.wire_lines, corpus.names[n - 1]
    assert client.quit().startswith(b"+OK")


@pytest.mark.parametrize("mode", MODES)
def test_retr_and_top_exact_wire_bytes(corpus: Corpus, mode: str) -> None:
    with _tls_wire(corpus.server, mode) as wire:
        wire.login(corpus.user, corpus.password)
        for n, message in enumerate(corpus.messages, 1):
            name = corpus.names[n - 1]
            assert wire.command(f"RETR {n}").startswith(b"+OK"), name
            assert wire.multiline() == message.retr_wire, name
            for body_lines in (0, 3):
                assert wire.command(f"TOP {n} {body_lines}").startswith(b"+OK"), name
                assert wire.multiline() == top_wire(message.data, body_lines), name
        assert wire.command("QUIT").startswith(b"+OK")
        assert wire.read_until_eof() == b""
        assert wire.clean_tls_close is True, "no TLS close_notify after QUIT"


@pytest.mark.parametrize("mode", MODES)
def test_top(corpus: Corpus, mode: str) -> None:
    client = pop3_login(corpus.server, mode)
    for n, message in enumerate(corpus.messages, 1):
        for body_lines in (0, 3, 1000):
            _, lines, _ = client.top(n, body_lines)
            assert lines == top_lines(message.data, body_lines), (corpus.names[n - 1], body_lines)
    client.quit()


def test_retr_of_unknown_message_numbers(corpus: Corpus) -> None:
    client = pop3_login(corpus.server, "implicit")
    count = len(corpus.messages)
    for bad in (str(count + 1), "0", "-1", "x", "99999999999999999999"):
        with pytest.raises(poplib.error_proto, match=r"-ERR"):
            client._shortcmd(f"RETR {bad}")
    assert client.noop().startswith(b"+OK")  # the session goes on after client mistakes
    client.quit()


@pytest.mark.parametrize("mode", MODES)
def test_dele_takes_effect_only_at_quit(corpus: Corpus, mode: str) -> None:
    server, messages = corpus.server, corpus.messages
    maildir = server.maildir("alice")
    client = pop3_login(server, mode)
    client.dele(2)
    client.dele(4)
    with pytest.raises(poplib.error_proto, match=r"-ERR"):
        client.retr(2)
    with pytest.raises(poplib.error_proto, match=r"-ERR"):
        client.dele(2)  # already marked
    kept = [m for i, m in enumerate(messages, 1) if i not in (2, 4)]
    assert client.stat() == (len(kept), sum(m.size for m in kept))
    _, listing, _ = client.list()
    assert [int(line.split()[0]) for line in listing] == [
        n for n in range(1, len(messages) + 1) if n not in (2, 4)
    ]
    # Nothing has left the disk before QUIT.
    assert set(message_files(maildir)) == {m.base for m in messages}
    assert client.rset().startswith(b"+OK")
    assert client.stat() == (len(messages), sum(m.size for m in messages))
    client.dele(2)
    client.dele(4)
    assert client.quit().startswith(b"+OK")

    files = message_files(maildir)
    assert files == {m.base: m.data for m in kept}
    client = pop3_login(server, mode)
    _, uidls, _ = client.uidl()
    assert uidls == [b"%d %s" % (n, m.base.encode()) for n, m in enumerate(kept, 1)]
    for n, message in enumerate(kept, 1):
        assert client.retr(n)[1] == message.wire_lines
    client.quit()


@pytest.mark.parametrize("mode", MODES)
def test_dropped_connection_deletes_nothing(corpus: Corpus, mode: str) -> None:
    client = pop3_login(corpus.server, mode)
    for n in range(1, len(corpus.messages) + 1):
        client.dele(n)
    client.sock.close()  # no QUIT: the session never reaches UPDATE
    client.file.close()

    client = pop3_login(corpus.server, mode)
    assert client.stat() == (len(corpus.messages), sum(m.size for m in corpus.messages))
    client.quit()
    assert message_files(corpus.server.maildir("alice")) == {
        m.base: m.data for m in corpus.messages
    }


def test_quit_moves_new_to_cur_and_keeps_bytes(corpus: Corpus) -> None:
    maildir = corpus.server.maildir("alice")
    client = pop3_login(corpus.server, "implicit")
    client.quit()
    assert list((maildir / "new").iterdir()) == []
    assert message_files(maildir) == {m.base: m.data for m in corpus.messages}


def test_uidl_stable_across_sessions_and_deletions(corpus: Corpus) -> None:
    client = pop3_login(corpus.server, "implicit")
    first = client.uidl()[1]
    client.quit()
    client = pop3_login(corpus.server, "stls")
    assert client.uidl()[1] == first
    client.dele(1)
    client.quit()
    client = pop3_login(corpus.server, "implicit")
    after = client.uidl()[1]
    client.quit()
    uids_before = [line.split()[1] for line in first]
    assert after == [b"%d %s" % (n, uid) for n, uid in enumerate(uids_before[1:], 1)]
    assert len(set(uids_before)) == len(uids_before)
    for uid in uids_before:
        assert 1 <= len(uid) <= 70 and all(0x21 <= c <= 0x7E for c in uid)


def test_noop_rset_and_empty_maildrop(mailslot: MailslotServer) -> None:
    client = pop3_login(mailslot, "implicit")
    assert client.noop().startswith(b"+OK")
    assert client.stat() == (0, 0)
    assert client.list()[1] == []
    assert client.uidl()[1] == []
    assert client.rset().startswith(b"+OK")
    client.quit()


def _capabilities(client: poplib.POP3) -> dict[str, list[str]]:
    return client.capa()


STANDARD_CAPS = {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"}


def test_capa_plaintext_before_stls_offers_no_login(mailslot: MailslotServer) -> None:
    client = poplib.POP3(*mailslot.starttls, timeout=30)
    caps = _capabilities(client)
    assert "STLS" in caps
    assert set(caps) >= STANDARD_CAPS
    assert "USER" not in caps
    assert "SASL" not in caps
    client.quit()


@pytest.mark.parametrize("mode", MODES)
def test_capa_after_tls_and_after_login(mailslot: MailslotServer, mode: str) -> None:
    client = pop3_connect(mailslot, mode)
    caps = _capabilities(client)
    assert set(caps) >= STANDARD_CAPS
    assert "USER" in caps
    assert "PLAIN" in caps["SASL"]
    assert "STLS" not in caps
    client.user("alice")
    client.pass_(mailslot.password("alice"))
    caps = _capabilities(client)
    assert {"TOP", "UIDL", "RESP-CODES", "PIPELINING"} <= set(caps)
    assert "STLS" not in caps
    client.quit()


@pytest.mark.parametrize(
    ("user", "scheme"),
    [("alice", "PLAIN"), ("bob", "SHA512-CRYPT"), ("carol@example.org", "PLAIN")],
)
def test_user_pass_with_each_scheme(mailslot: MailslotServer, user: str, scheme: str) -> None:
    assert mailslot.users[user].scheme == scheme
    builder = mailslot.builder(user)
    message = builder.add(b"Subject: for " + user.encode() + b"\n\nhello\n")
    client = pop3_login(mailslot, "implicit", user)
    assert client.retr(1)[1] == message.wire_lines
    client.quit()


def _plain(user: str, password: str, authzid: str = "") -> str:
    raw = f"{authzid}\0{user}\0{password}".encode()
    return base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize("mode", MODES)
def test_auth_plain_initial_response_and_continuation(mailslot: MailslotServer, mode: str) -> None:
    message = mailslot.builder("bob").add(b"Subject: sasl\n\nbody\n")
    with _tls_wire(mailslot, mode) as wire:
        reply = wire.command("AUTH PLAIN " + _plain("bob", mailslot.password("bob")))
        assert reply.startswith(b"+OK"), reply
        assert wire.command("RETR 1").startswith(b"+OK")
        assert wire.multiline() == message.retr_wire
        assert wire.command("QUIT").startswith(b"+OK")
    with _tls_wire(mailslot, mode) as wire:
        assert wire.command("AUTH PLAIN") == b"+ \r\n"
        reply = wire.command(_plain("bob", mailslot.password("bob")))
        assert reply.startswith(b"+OK"), reply
        assert wire.command("STAT") == b"+OK 1 %d\r\n" % message.size
        wire.command("QUIT")


def test_auth_plain_wrong_password_and_cancel(mailslot: MailslotServer) -> None:
    with _tls_wire(mailslot, "implicit") as wire:
        reply = wire.command("AUTH PLAIN " + _plain("bob", "wrong"))
        assert reply.startswith(b"-ERR [AUTH]"), reply
        assert wire.command("AUTH PLAIN") == b"+ \r\n"
        assert wire.command("*").startswith(b"-ERR")  # RFC 5034 section 4: cancelled
        reply = wire.command("AUTH PLAIN " + _plain("bob", mailslot.password("bob")))
        assert reply.startswith(b"+OK"), reply
        wire.command("QUIT")


def test_pipelined_commands_in_one_write(corpus: Corpus) -> None:
    """RFC 2449 PIPELINING: many commands in one segment, replies in order."""
    with _tls_wire(corpus.server, "implicit") as wire:
        first, second = corpus.messages[0], corpus.messages[1]
        wire.send(
            f"USER alice\r\nPASS {corpus.password}\r\nSTAT\r\nRETR 1\r\nNOOP\r\nRETR 2\r\nQUIT\r\n"
        )
        assert wire.line().startswith(b"+OK")
        assert wire.line().startswith(b"+OK")
        total = sum(m.size for m in corpus.messages)
        assert wire.line() == b"+OK %d %d\r\n" % (len(corpus.messages), total)
        assert wire.line().startswith(b"+OK")
        assert wire.multiline() == first.retr_wire
        assert wire.line().startswith(b"+OK")
        assert wire.line().startswith(b"+OK")
        assert wire.multiline() == second.retr_wire
        assert wire.line().startswith(b"+OK")
        assert wire.read_until_eof() == b""
