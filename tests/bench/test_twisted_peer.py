"""The benchmark's Twisted peer (benchmarks.twisted_pop3) serves the corpus right.

A peer that answers wrongly makes every run void, and one that is slowed by a missing
setting makes the ratios flattering: these tests run the real Twisted server from the
runner's own ``TwistedPop3`` on real sockets and read it with poplib and with the
benchmark's own clients.
"""

from __future__ import annotations

import os
import poplib
import ssl
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from benchmarks import corpus
from benchmarks.loadgen import ClientPool, run_coroutine_job
from benchmarks.pop3client import TlsMode
from benchmarks.report import Report
from benchmarks.scenarios import Job
from benchmarks.servers import TwistedPop3
from benchmarks.suites import Bench, Settings
from benchmarks.twisted_pop3 import read_passwd, wire_size

USERS = [f"l{n:03d}" for n in range(4)]


def test_read_passwd_takes_plain_entries_only(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(
        "alice:{PLAIN}pw one::::/home/alice::\n"
        "bob:{SHA512-CRYPT}$6$x$y::::/home/bob::\n"
        "\n"
        "carol:{PLAIN}::::/home/carol::\n"
    )
    assert read_passwd(str(path)) == {b"alice": b"pw one", b"carol": b""}


def test_wire_size_reads_w_field_else_counts_crlf(tmp_path: Path) -> None:
    named = tmp_path / "1.M1P1.host,S=10,W=99:2,"
    named.write_bytes(b"not read\n")
    assert wire_size(bytes(named)) == 99
    lf = tmp_path / "2.M2P2.host:2,"
    lf.write_bytes(b"a\nbb\r\nccc\n")  # two bare LFs become CRLF; the CRLF stays
    assert wire_size(bytes(lf)) == len(b"a\r\nbb\r\nccc\r\n")


@dataclass
class Peer:
    server: TwistedPop3
    ca: Path
    data: corpus.Corpus


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """A Twisted peer over the corpus, as the runner builds it."""
    tmp = tmp_path_factory.mktemp("twisted")
    data = corpus.Corpus(tmp, os.getuid(), os.getgid())
    ca, chain, key = corpus.make_certificate(tmp)
    passwd = tmp / "users"
    corpus.write_passwd(passwd, USERS, tmp / "home")
    mail = tmp / "mail"
    (tmp / "work").mkdir()
    mail.mkdir()
    for i, user in enumerate(USERS):
        data.make_maildir(mail, user, corpus.load_idents(i))
    server = TwistedPop3("twisted", tmp / "work", mail, passwd=passwd, cert=chain, key=key)
    server.start()
    try:
        yield Peer(server, ca, data)
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode is not None


def test_retr_sends_what_list_announces(peer: Peer) -> None:
    """LIST gives RETR's CRLF octets (RFC 1939 section 11); the bytes are the corpus's."""
    server = peer.server
    expected = {(e.size, e.crc) for e in peer.data.expected.values()}
    client = poplib.POP3("127.0.0.1", server.plain_port, timeout=10)
    try:
        client.user(USERS[0])
        client.pass_(corpus.PASSWORD)
        listing = client.list()[1]
        assert len(listing) == corpus.MESSAGES_PER_USER
        for entry in listing:
            number, size = (int(v) for v in entry.split())
            lines = client.retr(number)[1]  # poplib undoes the dot-stuffing
            body = b"".join(line + b"\r\n" for line in lines)
            assert len(body) == size
            assert (size, zlib.crc32(body)) in expected
    finally:
        client.quit()


def test_wrong_password_is_refused_over_implicit_tls(peer: Peer) -> None:
    ctx = ssl.create_default_context(cafile=str(peer.ca))
    client = poplib.POP3_SSL("localhost", peer.server.tls_port, timeout=10, context=ctx)
    try:
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        client.user(USERS[1])
        with pytest.raises(poplib.error_proto, match="-ERR"):
            client.pass_("not the password")
    finally:
        client.close()


@pytest.mark.parametrize("tls", ["none", "implicit"])
def test_benchmark_session_client_finds_no_error(peer: Peer, tls: TlsMode) -> None:
    """The session benchmark's checks (sizes, CRCs, dot-stuffing, STAT against LIST) pass."""
    server = peer.server
    expected = dict(peer.data.expected)
    port = server.tls_port if tls == "implicit" else server.plain_port
    job = Job("session", port, tls, str(peer.ca), USERS, expected, duration=30.0, max_ops=8)
    res = run_coroutine_job(job, None)
    assert res.errors == 0, res.describe_errors()
    assert res.ops >= 8
    assert res.bytes > 8 * 40_000


def test_login_suite_skips_stls_for_the_twisted_peer(peer: Peer) -> None:
    """Twisted's POP3 server has no STLS: its plain and TLS figures exist, STLS's do not."""
    server = peer.server
    report = Report([server.name])
    pool = ClientPool(1)
    try:
        settings = Settings(reps=1, duration=0.3, concurrency=2)
        bench = Bench(settings, pool, peer.data, report, str(peer.ca), USERS, [], USERS[3])
        bench.login(server)
    finally:
        pool.close()
    assert report.errors == []
    names = set(report.figures)
    assert {"login plain rate", "login tls rate"} <= names
    assert not any(name.startswith("login stls") for name in names)
    assert report.figures["login plain rate"].median(server.name) > 0
