"""``[auth] backend = "dovecot"`` against a real Dovecot 2.3 auth service (mailslot.auth.dovecot).

The test starts a private Dovecot (tests/support/dovecot.py) whose ``service auth`` has two
more Unix listeners in its own base_dir: ``mailslot-client`` (the auth client protocol) and
``mailslot-userdb`` (the master protocol's USER lookup).  Its passdb is a passwd-file.
mailslot is configured with ``backend = "dovecot"`` and poplib logs in through it: a right
password, a wrong one, an unknown user (the same reply, byte for byte), a mixed-case name
(Dovecot's ``auth_username_format = %Lu`` gives the canonical name), the home from
Dovecot's userdb, ``allow_nets`` judged on the client address mailslot passes on (``rip``),
a stopped Dovecot (``-ERR [SYS/TEMP]`` and a log line) and one started again, and LMTP
recipients looked up in Dovecot's userdb.

The yardstick for refusals is Dovecot's own pop3 service: for users with passdb restrictions
(``nologin``, ``reason``, ``nodelay``, ``allow_nets``, ``proxy``, ``host``) the same Dovecot answers
a login on its pop3 port and, through its auth socket, mailslot's; the replies must match.
"""

from __future__ import annotations

import poplib
import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.test_passwd_dovecot import login, shape
from tests.support.dovecot import DovecotServer
from tests.support.maildir import MaildirBuilder, message_files
from tests.support.passwd import PasswdUser
from tests.support.server import DEFAULT_LISTENERS, Listener, MailslotServer
from tests.support.tls import TlsFiles

pytestmark = pytest.mark.dovecot

SERVICE_AUTH = """
service auth {
  unix_listener mailslot-client {
    mode = 0666
  }
  unix_listener mailslot-userdb {
    mode = 0666
  }
}
"""


@pytest.fixture
def dovecot(tls_files: TlsFiles, tmp_path: Path) -> Iterator[DovecotServer]:
    homes = tmp_path / "homes"
    users = (
        PasswdUser("alice", "alice-secret", home=str(homes / "alice")),
        PasswdUser("bob", "bob secret with spaces", scheme="SHA512-CRYPT", home=str(homes / "bob")),
    )
    # A directory of the test's own, kept when Dovecot stops, so that a Dovecot started
    # again listens on the same sockets (test_dovecot_stopped_is_a_temporary_failure).
    directory = Path(tempfile.mkdtemp(prefix="mailslot-dovecot-auth-"))
    server = DovecotServer(tls_files, users, directory=directory, blocks=SERVICE_AUTH)
    # allow_nets (a passdb extra field) judges the client address mailslot sends as rip.
    with (server.directory / "users").open("a", encoding="utf-8") as passwd:
        for name, nets in (("near", "127.0.0.0/8"), ("far", "192.0.2.0/24")):
            passwd.write(
                f"{name}:{{PLAIN}}{name}-secret:{server.uid}:{server.gid}::::allow_nets={nets}\n"
            )
    try:
        with server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _mailslot(
    mailslot_factory: object, dovecot: DovecotServer, maildir: str, **options: object
) -> MailslotServer:
    run = dovecot.directory / "run"
    return mailslot_factory(  # type: ignore[operator, no-any-return]
        **options,
        users=(),  # no passwd-file users: only Dovecot knows who may log in
        auth={"backend": "dovecot"},
        extra_sections={
            "auth.dovecot": {
                "socket": str(run / "mailslot-client"),
                "userdb_socket": str(run / "mailslot-userdb"),
            },
            "store": {"maildir": maildir},
        },
    )


def _login(server: MailslotServer, user: str, password: str) -> poplib.POP3:
    host, port = server.starttls
    client = poplib.POP3(host, port, timeout=30)
    client.stls(server.tls_files.client_context())
    client.user(user)
    try:
        client.pass_(password)
    except BaseException:
        client.close()
        raise
    return client


def _refusal(server: MailslotServer, user: str, password: str) -> bytes:
    with pytest.raises(poplib.error_proto) as caught:
        _login(server, user, password)
    reply = caught.value.args[0]
    assert isinstance(reply, bytes)
    return reply


def test_logins_through_dovecot(
    mailslot_factory: object, dovecot: DovecotServer, tmp_path: Path
) -> None:
    mailslot = _mailslot(mailslot_factory, dovecot, str(tmp_path / "mail/{user}/Maildir"))
    MaildirBuilder(tmp_path / "mail/alice/Maildir").add(b"Subject: hi\n\nhello\n")
    client = _login(mailslot, "alice", "alice-secret")
    assert client.stat()[0] == 1
    client.quit()
    # Dovecot's auth_username_format (%Lu by default) names the user: the same maildrop.
    client = _login(mailslot, "ALICE", "alice-secret")
    assert client.stat()[0] == 1
    client.quit()
    client = _login(mailslot, "bob", "bob secret with spaces")  # a SHA512-CRYPT hash
    assert client.stat()[0] == 0
    client.quit()
    wrong = _refusal(mailslot, "alice", "not-her-password")
    unknown = _refusal(mailslot, "mallory", "alice-secret")
    assert wrong.startswith(b"-ERR [AUTH]")
    assert unknown == wrong
    log = mailslot.log()
    assert "login: user=alice " in log
    assert "login failed: user=mallory" in log


def test_home_comes_from_dovecots_userdb(
    mailslot_factory: object, dovecot: DovecotServer, tmp_path: Path
) -> None:
    mailslot = _mailslot(mailslot_factory, dovecot, "{home}/Maildir")
    builder = MaildirBuilder(tmp_path / "homes/alice/Maildir")
    builder.add(b"Subject: one\n\n1\n")
    builder.add(b"Subject: two\n\n2\n")
    client = _login(mailslot, "alice", "alice-secret")
    assert client.stat()[0] == 2
    client.quit()


def test_dovecot_stopped_is_a_temporary_failure(
    mailslot_factory: object, dovecot: DovecotServer, tmp_path: Path
) -> None:
    mailslot = _mailslot(mailslot_factory, dovecot, str(tmp_path / "mail/{user}/Maildir"))
    _login(mailslot, "alice", "alice-secret").quit()  # a connection to Dovecot is open now
    dovecot.stop()
    assert _refusal(mailslot, "alice", "alice-secret").startswith(b"-ERR [SYS/TEMP]")
    assert _refusal(mailslot, "alice", "wrong").startswith(b"-ERR [SYS/TEMP]")
    log = mailslot.log()
    assert "dovecot auth unavailable" in log
    assert "user database unavailable: user=alice" in log
    # Dovecot is back (the same sockets): the next login connects again by itself.
    again = DovecotServer(
        dovecot.tls_files,
        [PasswdUser("alice", "alice-secret")],
        directory=dovecot.directory,
        blocks=SERVICE_AUTH,
    )
    with again:
        _login(mailslot, "alice", "alice-secret").quit()


def test_dovecot_sees_the_clients_address(
    mailslot_factory: object, dovecot: DovecotServer, tmp_path: Path
) -> None:
    """Without rip Dovecot refuses every allow_nets user ("remote IP not known")."""
    mailslot = _mailslot(mailslot_factory, dovecot, str(tmp_path / "mail/{user}/Maildir"))
    _login(mailslot, "near", "near-secret").quit()
    assert _refusal(mailslot, "far", "far-secret").startswith(b"-ERR [AUTH]")


def test_lmtp_delivery_finds_users_in_dovecots_userdb(
    mailslot_factory: object, dovecot: DovecotServer, tmp_path: Path
) -> None:
    """LMTP looks recipients up with ``USER`` on the userdb socket: a known user's mail goes
    to the home Dovecot names, an unknown one is refused (RFC 2033, 550)."""
    mailslot = _mailslot(
        mailslot_factory,
        dovecot,
        "{home}/Maildir",
        listeners=(*DEFAULT_LISTENERS, Listener("none", protocol="lmtp")),
    )
    address, port = mailslot.listener("none", protocol="lmtp")
    with smtplib.LMTP(address, port) as lmtp:
        refused = lmtp.sendmail(
            "sender@example.org", ["alice", "ghost"], b"Subject: hello\n\nthrough LMTP\n"
        )
    assert list(refused) == ["ghost"] and refused["ghost"][0] == 550
    client = _login(mailslot, "alice", "alice-secret")
    assert client.stat()[0] == 1
    assert b"through LMTP" in client.retr(1)[1]
    client.quit()
    assert len(message_files(tmp_path / "homes/alice/Maildir")) == 1


# Users with Dovecot's passdb restrictions, and the logins each server must answer alike.
RESTRICTED = [
    "open:{PLAIN}secret:{uid}:{gid}::::",
    "closed:{PLAIN}secret:{uid}:{gid}::::nologin",
    "moved:{PLAIN}secret:{uid}:{gid}::::nologin reason=Moved nodelay",
    "gone:{PLAIN}secret:{uid}:{gid}::::nologin reason=Gone",
    "quick:{PLAIN}secret:{uid}:{gid}::::nodelay",
    "why:{PLAIN}secret:{uid}:{gid}::::reason=Why",
    "tennet:{PLAIN}secret:{uid}:{gid}::::allow_nets=10.0.0.0/8 nodelay",
    "nets1st:{PLAIN}secret:{uid}:{gid}::::nologin reason=Moved allow_nets=10.0.0.0/8",
    "realten:{PLAIN}secret:{uid}:{gid}::::allow_real_nets=10.0.0.0/8",
    "badnets:{PLAIN}secret:{uid}:{gid}::::allow_nets=127.0.0.0/33",
    "prox:{PLAIN}secret:{uid}:{gid}::::proxy host=192.0.2.9",
    "proxnl:{PLAIN}secret:{uid}:{gid}::::proxy nologin reason=Moved host=192.0.2.9",
    "refer:{PLAIN}secret:{uid}:{gid}::::host=192.0.2.9",
    "elsewhere:{PLAIN}secret:{uid}:{gid}::::nologin host=192.0.2.9",
    "gonethere:{PLAIN}secret:{uid}:{gid}::::nologin reason=Gone host=192.0.2.9 nodelay",
]
COMPARED = [
    (name, password)
    for name in ("open", "closed", "moved", "gone", "quick", "why", "tennet", "nets1st")
    for password in ("secret", "wrong")
]
COMPARED += [(name, "secret") for name in ("refer", "elsewhere", "gonethere", "realten")]
COMPARED += [("badnets", "secret"), ("Closed", "secret"), ("nobody", "secret")]


def test_refusals_are_dovecot_pop3s(mailslot_factory: object, tls_files: TlsFiles) -> None:
    """Dovecot's auth service answers a nologin user's right password with ``OK ... nologin
    [reason=] [nodelay]`` and everything else it refuses with a bare ``FAIL``; its pop3-login
    turns the first into ``-ERR [AUTH] <reason>`` (or "Login disabled for this user"), the
    second into the wrong password's reply.  mailslot over the same auth socket must too."""
    directory = Path(tempfile.mkdtemp(prefix="mailslot-dovecot-auth-"))
    dovecot = DovecotServer(
        tls_files,
        [],
        directory=directory,
        passwd_lines=RESTRICTED,
        settings={"auth_failure_delay": "0"},
        blocks=SERVICE_AUTH,
    )
    try:
        with dovecot:
            ours = _mailslot(
                mailslot_factory,
                dovecot,
                str(directory / "ours/{user}/Maildir"),
                allow_plaintext=True,
                failure_delay=0.0,
                failure_delay_max=0.0,
                limits={"max_bad_commands_before_login": 1000},
            )
            host, port = ours.listener("starttls")
            differences = []
            for name, password in COMPARED:
                theirs = shape(login("127.0.0.1", dovecot.pop3_port, name, password))
                mine = shape(login(host, port, name, password))
                if mine != theirs:
                    differences.append((name, password, mine, theirs))
            assert not differences, f"{differences}\nDovecot log:\n{dovecot.log()}"
            # The comparison saw each kind of reply.
            assert shape(login(host, port, "closed", "secret")) == (
                b"-ERR [AUTH] Login disabled for this user"
            )
            assert shape(login(host, port, "moved", "secret")) == b"-ERR [AUTH] Moved"
            # nologin with host: a referral, without a response code.
            assert shape(login(host, port, "elsewhere", "secret")) == (
                b"-ERR Try this server instead."
            )
            assert shape(login(host, port, "open", "secret")) == b"+OK"
            # Dovecot proxies these (here to an address where nobody answers: -ERR [SYS/TEMP]
            # after its connect timeout); mailslot does not proxy, and refuses as a wrong
            # password, nologin or not.
            failed = shape(login(host, port, "open", "wrong"))
            assert failed == b"-ERR [AUTH] Authentication failed."
            assert shape(login(host, port, "prox", "secret")) == failed
            assert shape(login(host, port, "proxnl", "secret")) == failed
            log = ours.log()
            assert "dovecot auth: user=moved refused: nologin (Moved)" in log
            assert "dovecot auth: user=prox refused: proxy: mailslot does not proxy" in log
            assert "secret" not in log
    finally:
        shutil.rmtree(directory, ignore_errors=True)
