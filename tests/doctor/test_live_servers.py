"""``mailslot doctor`` against real POP3 servers: a mailslot and a stock Dovecot.

mailslot runs with the test fixtures' certificate (leaf + intermediate, trusted through the
throwaway root given with ``--cafile``) and its defaults: everything is ok.  Dovecot runs as
tests/support/dovecot.py configures it (cleartext logins allowed before STLS, OpenSSL's
default groups and suites): the doctor reports those findings and exits 1.
"""

from __future__ import annotations

import pytest
from tests.doctor.conftest import run_doctor
from tests.support.dovecot import DovecotServer
from tests.support.maildir import MaildirBuilder
from tests.support.passwd import DEFAULT_USERS
from tests.support.server import MailslotServer, ServerFactory
from tests.support.tls import TlsFiles


def _args(host: str, port: int, stls_port: int, tls_files: TlsFiles) -> list[str]:
    return [
        host,
        "--port",
        str(port),
        "--stls-port",
        str(stls_port),
        "--cafile",
        str(tls_files.ca_pem),
    ]


def test_mailslot_is_all_ok(mailslot_factory: ServerFactory, tls_files: TlsFiles) -> None:
    server: MailslotServer = mailslot_factory()
    builder = server.builder("alice")
    for number in range(3):
        builder.add(f"Subject: {number}\r\n\r\nbody {number}\r\n".encode())
    _, port = server.implicit
    _, stls_port = server.starttls
    outcome = run_doctor(
        *_args("localhost", port, stls_port, server.tls_files),
        "--user",
        "alice",
        "--password-stdin",
        stdin=server.password("alice") + "\n",
    )
    not_ok = {key: status for key, status in outcome.statuses().items() if status != "ok"}
    assert not_ok == {}, outcome.stdout
    assert outcome.status == 0
    login = outcome.checks("pop3.login")[0]
    assert login["port"] == port
    assert login["details"]["messages"] == 3
    assert server.password("alice") not in outcome.stdout + outcome.stderr
    # Both ports got the full set of TLS and certificate checks.
    for check in (
        "tls.handshake",
        "cert.chain",
        "cert.intermediates",
        "cert.name",
        "cert.expiry",
        "cert.key",
        "tls.v1_0",
        "tls.v1_1",
        "tls.modern",
        "tls.suites",
        "tls.groups",
    ):
        assert outcome.status_of(check, port) == "ok"
        assert outcome.status_of(check, stls_port) == "ok"
    assert outcome.checks("tls.groups", port)[0]["details"]["accepted"] == [
        "X25519",
        "P-256",
        "P-384",
    ]
    for check in ("pop3.stls", "pop3.cleartext-auth", "pop3.capa", "pop3.greeting"):
        assert outcome.status_of(check, stls_port) == "ok"


def test_mailslot_by_ip_address_and_text_output(
    mailslot_factory: ServerFactory, tls_files: TlsFiles
) -> None:
    server = mailslot_factory()
    host, port = server.implicit
    _, stls_port = server.starttls
    outcome = run_doctor(*_args(host, port, stls_port, tls_files), "--no-groups", json_output=False)
    assert outcome.status == 0, outcome.stdout
    assert f"ok      cert.name              [{port}] 127.0.0.1 matches" in outcome.stdout
    assert outcome.stdout.rstrip().endswith("0 warning, 0 failure")


def test_mailslot_login_with_a_wrong_password(
    mailslot_factory: ServerFactory, tls_files: TlsFiles
) -> None:
    server = mailslot_factory()
    _, port = server.implicit
    _, stls_port = server.starttls
    outcome = run_doctor(
        *_args("localhost", port, stls_port, tls_files),
        "--no-groups",
        "--user",
        "alice",
        "--password-stdin",
        stdin="not-the-password\n",
    )
    assert outcome.status == 1
    login = outcome.checks("pop3.login")[0]
    assert login["status"] == "failure"
    assert "refused" in login["summary"]
    assert "not-the-password" not in outcome.stdout + outcome.stderr


def test_mailslot_without_the_ca_fails_the_chain(
    mailslot_factory: ServerFactory, tls_files: TlsFiles
) -> None:
    # No --cafile: the throwaway root is in no trust store, as for a client never given it.
    server = mailslot_factory()
    _, port = server.implicit
    _, stls_port = server.starttls
    outcome = run_doctor(
        "localhost",
        "--port",
        str(port),
        "--stls-port",
        str(stls_port),
        "--no-groups",
        "--user",
        "alice",
        "--password-stdin",
        stdin=server.password("alice") + "\n",
    )
    assert outcome.status == 1
    assert outcome.status_of("cert.chain", port) == "failure"
    assert outcome.status_of("cert.intermediates", port) == "failure"
    login = outcome.checks("pop3.login")[0]
    assert login["status"] == "failure"
    assert "password was not sent" in login["summary"]


@pytest.mark.dovecot
def test_stock_dovecot(tls_files: TlsFiles) -> None:
    dovecot = DovecotServer(tls_files, DEFAULT_USERS)
    try:
        MaildirBuilder(dovecot.maildir("alice")).add(b"Subject: hi\r\n\r\nhello\r\n")
        dovecot.start()
        alice = DEFAULT_USERS[0]
        outcome = run_doctor(
            *_args("localhost", dovecot.pop3s_port, dovecot.pop3_port, tls_files),
            "--user",
            alice.name,
            "--password-stdin",
            stdin=alice.password + "\n",
        )
    finally:
        dovecot.stop()
    plain, implicit = dovecot.pop3_port, dovecot.pop3s_port
    # The fixture allows cleartext logins before STLS: the one failure.
    cleartext = outcome.checks("pop3.cleartext-auth", plain)[0]
    assert cleartext["status"] == "failure", outcome.stdout
    assert "USER" in cleartext["details"]["offered"]
    assert outcome.status == 1
    failures = [key for key, status in outcome.statuses().items() if status == "failure"]
    assert failures == [("pop3.cleartext-auth", plain)], outcome.stdout
    for port in (implicit, plain):
        for check in (
            "cert.chain",
            "cert.intermediates",
            "cert.name",
            "tls.v1_0",
            "tls.v1_1",
            "tls.modern",
        ):
            assert outcome.status_of(check, port) == "ok"
    assert outcome.status_of("pop3.stls", plain) == "ok"
    assert outcome.checks("pop3.login")[0]["details"]["messages"] == 1
