"""STLS (RFC 2595 section 4) over a real socket, including the CVE-2011-0411 injection class.

Bytes a client sends after ``STLS`` in the same write must never be executed: not in
plaintext (before the handshake) and not inside the TLS session that follows.
"""

from __future__ import annotations

import ssl

from tests.support.server import Listener, MailslotServer, ServerFactory
from tests.support.wire import TLS_RECORD_TYPES, ConnectionClosed, Pop3Wire


def test_command_injected_after_stls_is_not_executed(mailslot: MailslotServer) -> None:
    with Pop3Wire(*mailslot.starttls) as wire:
        wire.send(b"STLS\r\nCAPA\r\n")
        reply = wire.line()
        assert reply.startswith(b"+OK"), reply
        try:
            raw = wire.start_tls(mailslot.tls_files.client_context())
        except (ConnectionClosed, ssl.SSLError, OSError):
            # Dropping the connection (or failing the handshake) is an acceptable defence; what
            # must not happen is a plaintext answer, checked through the raw bytes below.
            return
        # The first byte after the STLS reply must start a TLS record, not "+OK"/"-ERR".
        assert raw and raw[0] in TLS_RECORD_TYPES, raw[:64]
        # Inside TLS: QUIT's reply must be the first and only thing the server says.
        wire.send(b"QUIT\r\n")
        rest = wire.read_until_eof()
        assert rest.count(b"\r\n") == 1 and rest.startswith(b"+OK"), rest


def test_pipelined_bytes_after_stls_reply_are_discarded_even_if_tls_follows(
    mailslot: MailslotServer,
) -> None:
    # A longer injection: a whole login attempt behind STLS.
    password = mailslot.password("alice")
    with Pop3Wire(*mailslot.starttls) as wire:
        wire.send(f"STLS\r\nUSER alice\r\nPASS {password}\r\nSTAT\r\n".encode())
        assert wire.line().startswith(b"+OK")
        try:
            raw = wire.start_tls(mailslot.tls_files.client_context())
        except (ConnectionClosed, ssl.SSLError, OSError):
            return
        assert raw and raw[0] in TLS_RECORD_TYPES, raw[:64]
        assert wire.command("STAT").startswith(b"-ERR")  # not logged in by the injection


def test_after_stls_user_is_forgotten_capa_has_no_stls_and_second_stls_fails(
    mailslot_factory: ServerFactory,
) -> None:
    server = mailslot_factory(listeners=[Listener("starttls")], allow_plaintext=True)
    server.builder("alice").add(b"Subject: s\n\nx\n")
    with Pop3Wire(*server.starttls) as wire:
        assert wire.command("USER alice").startswith(b"+OK")
        assert wire.command("STLS").startswith(b"+OK")
        wire.start_tls(server.tls_files.client_context())
        assert wire.tls_version in ("TLSv1.2", "TLSv1.3")
        # RFC 2595 section 4: the client must discard cached state; so must the server.
        assert wire.command("PASS " + server.password("alice")).startswith(b"-ERR")
        assert wire.command("CAPA").startswith(b"+OK")
        caps = wire.multiline().split(b"\r\n")
        assert b"STLS" not in caps
        assert b"USER" in caps
        assert wire.command("STLS").startswith(b"-ERR")
        wire.login("alice", server.password("alice"))
        assert wire.command("STAT").startswith(b"+OK 1 ")
        assert wire.command("QUIT").startswith(b"+OK")
        assert wire.read_until_eof() == b""
        assert wire.clean_tls_close is True


def test_stls_not_offered_or_accepted_on_implicit_tls(mailslot: MailslotServer) -> None:
    with Pop3Wire(*mailslot.implicit, tls_context=mailslot.tls_files.client_context()) as wire:
        assert wire.command("STLS").startswith(b"-ERR")
        wire.login("alice", mailslot.password("alice"))
        assert wire.command("STLS").startswith(b"-ERR")


def test_stls_after_login_is_refused(mailslot_factory: ServerFactory) -> None:
    server = mailslot_factory(listeners=[Listener("starttls")], allow_plaintext=True)
    with Pop3Wire(*server.starttls) as wire:
        wire.login("alice", server.password("alice"))
        assert wire.command("STLS").startswith(b"-ERR")
        assert wire.command("QUIT").startswith(b"+OK")
