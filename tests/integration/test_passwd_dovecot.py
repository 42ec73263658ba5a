"""One passwd-file, two servers: mailslot refuses and admits whom a real Dovecot 2.3 does.

The same lines (extra fields and all) are given to mailslot and to a Dovecot started by the
test (tests/support/dovecot.py); each login is made against both with USER/PASS and the
replies compared: exactly for a refusal (Dovecot's reply class and text), as ``+OK`` for an
admission (the greeting texts differ).  Dovecot runs with its defaults where they matter:
``auth_username_format = %Lu`` and the passwd-file's ``CRYPT`` default scheme.
"""

from __future__ import annotations

import contextlib
import itertools
import poplib
import socket
from pathlib import Path

import pytest
from passlib.hash import md5_crypt
from tests.server.test_proxy import proxied_wire, v1
from tests.support.dovecot import DovecotServer
from tests.support.server import Listener, MailslotServer, ServerFactory
from tests.support.tls import TlsFiles

pytestmark = pytest.mark.dovecot

MD5 = md5_crypt.hash("secret")

LINES = [
    "alice:{PLAIN}secret:{uid}:{gid}::::",
    "closed:{PLAIN}secret:{uid}:{gid}::::nologin",
    "moved:{PLAIN}secret:{uid}:{gid}::::nologin reason=Moved nodelay",
    "tennet:{PLAIN}secret:{uid}:{gid}::::allow_nets=10.0.0.0/8",
    "local:{PLAIN}secret:{uid}:{gid}::::allow_nets=127.0.0.0/8,10.0.0.0/8",
    "realten:{PLAIN}secret:{uid}:{gid}::::allow_real_nets=10.0.0.0/8",
    "MiXed:{PLAIN}secret:{uid}:{gid}::::",
    "lower:{PLAIN}secret:{uid}:{gid}::::",
    "oldmd5:{MD5-CRYPT}" + MD5 + ":{uid}:{gid}::::",
    "baremd5:" + MD5 + ":{uid}:{gid}::::",
]

# (login name, password): each must get the same reply from both servers.
ATTEMPTS = [
    ("alice", "secret"),
    ("alice", "wrong"),
    ("closed", "secret"),
    ("closed", "wrong"),
    ("moved", "secret"),
    ("moved", "wrong"),
    ("tennet", "secret"),
    ("tennet", "wrong"),
    ("local", "secret"),
    ("realten", "secret"),
    ("MiXed", "secret"),
    ("mixed", "secret"),
    ("LOWER", "secret"),
    ("Lower", "secret"),
    ("lower", "wrong"),
    ("oldmd5", "secret"),
    ("OldMD5", "secret"),
    ("oldmd5", "wrong"),
    ("baremd5", "secret"),
    ("nobody", "secret"),
]


class _From(poplib.POP3):
    """poplib from a given source address."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, (self._source, 0))


_SOURCES = itertools.count(2)


def login(host: str, port: int, name: str, password: str) -> bytes:
    # Each attempt from its own loopback address: Dovecot's per-address auth penalty (anvil,
    # up to 15 s) would otherwise slow the comparison to minutes; mailslot's is set to 0.
    n = next(_SOURCES)
    client = _From(host, port, f"127.0.{n // 250 % 250}.{n % 250 + 2}")
    try:
        client.user(name)
        try:
            reply = client.pass_(password)
        except poplib.error_proto as exc:
            reply = exc.args[0]
        with contextlib.suppress(poplib.error_proto, OSError):
            client.quit()
    finally:
        client.close()
    return bytes(reply)


def shape(reply: bytes) -> bytes:
    """A refusal as sent; an admission as ``+OK`` (the two servers word it differently)."""
    return b"+OK" if reply.startswith(b"+OK") else reply


def write_for_mailslot(server: MailslotServer, lines: list[str], uid: int, gid: int) -> None:
    text = "".join(
        line.replace("{uid}", str(uid)).replace("{gid}", str(gid)) + "\n" for line in lines
    )
    server.passwd_path.write_text(text, encoding="utf-8")


@pytest.fixture
def dovecot(tls_files: TlsFiles) -> DovecotServer:
    server = DovecotServer(
        tls_files,
        [],
        passwd_lines=LINES,
        settings={"auth_failure_delay": "0"},
    )
    server.start()
    yield server
    server.stop()


def test_same_replies_as_dovecot(mailslot_factory: ServerFactory, dovecot: DovecotServer) -> None:
    ours = mailslot_factory(
        start=False,
        allow_plaintext=True,
        failure_delay=0.0,
        failure_delay_max=0.0,
        limits={"max_bad_commands_before_login": 1000},
        auth={"legacy_schemes": ["MD5-CRYPT"]},
    )
    write_for_mailslot(ours, LINES, dovecot.uid, dovecot.gid)
    ours.start()
    host, port = ours.listener("starttls")
    differences = []
    for name, password in ATTEMPTS:
        theirs = shape(login("127.0.0.1", dovecot.pop3_port, name, password))
        mine = shape(login(host, port, name, password))
        if mine != theirs:
            differences.append((name, password, mine, theirs))
    assert not differences, f"{differences}\nDovecot log:\n{dovecot.log()}"
    # The replies were not all alike: the comparison saw both classes, and the texts.
    theirs_nologin = shape(login("127.0.0.1", dovecot.pop3_port, "moved", "secret"))
    assert theirs_nologin == b"-ERR [AUTH] Moved"
    assert shape(login(host, port, "LOWER", "secret")) == b"+OK"
    log = ours.log()
    assert "login refused, allow_nets check failed: user=tennet" in log
    assert "login refused, nologin: user=moved" in log
    assert "user=oldmd5 logged in with a MD5-CRYPT password (a legacy scheme)" in log
    assert "line 7: user name is not as [auth] username_format (%Lu) makes" in log
    assert "secret" not in log


def test_unlisted_md5_crypt_is_refused_like_a_wrong_password(
    mailslot_factory: ServerFactory,
) -> None:
    ours = mailslot_factory(start=False, allow_plaintext=True, failure_delay=0.0)
    write_for_mailslot(ours, LINES, 0, 0)
    ours.start()
    host, port = ours.listener("starttls")
    assert login(host, port, "oldmd5", "secret") == login(host, port, "oldmd5", "wrong")
    assert (
        "login refused: user=oldmd5 has a MD5-CRYPT password, which [auth] legacy_schemes"
        " does not list" in ours.log()
    )


def test_allow_nets_and_allow_real_nets_under_the_proxy_protocol(
    mailslot_factory: ServerFactory,
) -> None:
    """allow_nets is the client the PROXY header names; allow_real_nets the proxy itself."""
    ours = mailslot_factory(
        start=False,
        listeners=[Listener("starttls", proxy_protocol=True)],
        allow_plaintext=True,
        failure_delay=0.0,
    )
    write_for_mailslot(
        ours,
        [
            "tennet:{PLAIN}secret::::::allow_nets=10.0.0.0/8",
            "realten:{PLAIN}secret::::::allow_real_nets=10.0.0.0/8",
            "both:{PLAIN}secret::::::allow_nets=10.0.0.0/8 allow_real_nets=127.0.0.1",
        ],
        0,
        0,
    )
    ours.start()

    def proxied(name: str) -> bytes:
        wire = proxied_wire(ours, "starttls", v1("10.1.2.3", 4000, "127.0.0.1", 110))
        try:
            assert wire.greeting.startswith(b"+OK")
            assert wire.command(f"USER {name}").startswith(b"+OK")
            return wire.command("PASS secret")
        finally:
            wire.close()

    assert proxied("tennet").startswith(b"+OK")
    assert proxied("realten") == b"-ERR [AUTH] Authentication failed.\r\n"
    assert proxied("both").startswith(b"+OK")


def test_per_domain_files_as_dovecots_percent_d(
    mailslot_factory: ServerFactory, tls_files: TlsFiles
) -> None:
    dovecot = DovecotServer(
        tls_files,
        [],
        passwd_lines=[],
        settings={"auth_failure_delay": "0"},
    )
    domains = dovecot.directory / "domains"
    dovecot_ready = False
    try:
        ours = mailslot_factory(
            start=False,
            allow_plaintext=True,
            failure_delay=0.0,
            auth={"passwd_file": str(domains) + "/{domain}/passwd"},
        )
        files = {
            "one.example": ["carol@one.example:{PLAIN}one:{uid}:{gid}::::"],
            "two.example": ["carol@two.example:{PLAIN}two:{uid}:{gid}::::nologin"],
        }
        for domain, lines in files.items():
            (domains / domain).mkdir(parents=True)
            path = domains / domain / "passwd"
            path.write_text(
                "".join(
                    line.replace("{uid}", str(dovecot.uid)).replace("{gid}", str(dovecot.gid))
                    + "\n"
                    for line in lines
                ),
                encoding="utf-8",
            )
            path.chmod(0o644)
        domains.chmod(0o755)
        for sub in domains.iterdir():
            sub.chmod(0o755)
        rewrite_passdb(dovecot, str(domains) + "/%d/passwd")
        dovecot.start()
        dovecot_ready = True
        ours.start()
        host, port = ours.listener("starttls")
        differences = []
        for name, password in [
            ("carol@one.example", "one"),
            ("Carol@ONE.example", "one"),
            ("carol@one.example", "two"),
            ("carol@two.example", "two"),
            ("carol@three.example", "one"),
            ("carol", "one"),
        ]:
            theirs = shape(login("127.0.0.1", dovecot.pop3_port, name, password))
            mine = shape(login(host, port, name, password))
            if mine != theirs:
                differences.append((name, password, mine, theirs))
        assert not differences, f"{differences}\nDovecot log:\n{dovecot.log()}"
        assert shape(login(host, port, "Carol@One.Example", "one")) == b"+OK"
        # The maildrop is the normalised name's.
        assert (ours.maildir("carol@one.example") / "cur").is_dir()
    finally:
        if dovecot_ready or dovecot.directory.exists():
            dovecot.stop()


def rewrite_passdb(dovecot: DovecotServer, template: str) -> None:
    """Point the passdb and userdb at ``template`` (Dovecot 2.3 syntax)."""
    if (dovecot.major, dovecot.minor) >= (2, 4):
        pytest.skip("the per-domain comparison writes Dovecot 2.3 passdb args")
    config = dovecot.config_path.read_text(encoding="utf-8")
    old = str(Path(dovecot.directory) / "users")
    dovecot.config_path.write_text(config.replace(old, template), encoding="utf-8")
