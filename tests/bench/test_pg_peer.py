"""The benchmark's ``mailslot-pg`` variant serves the corpus from PostgreSQL, and its
round-trip count is what the store sends.

Real parts: the benchmark's own private cluster (benchmarks.pgcluster, with
pg_stat_statements), ``mailslot db upgrade``, a real mailslot on real sockets, poplib.
"""

from __future__ import annotations

import os
import poplib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from benchmarks import corpus, pgcluster, pgstore
from benchmarks.loadgen import ClientPool
from benchmarks.report import Report
from benchmarks.servers import MailslotPg
from benchmarks.suites import Bench, Settings
from tests.support.programs import in_ci

USERS = [f"l{n:03d}" for n in range(3)]
PROBE = "p0"


@dataclass
class Peer:
    server: MailslotPg
    ca: Path
    data: corpus.Corpus


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    try:
        pgcluster.find_binaries()
    except RuntimeError as exc:
        if in_ci():
            pytest.fail(f"CI=true and {exc}")
        pytest.skip(str(exc))
    tmp = tmp_path_factory.mktemp("pg")
    data = corpus.Corpus(tmp, os.getuid(), os.getgid())
    ca, chain, key = corpus.make_certificate(tmp)
    (tmp / "work").mkdir()
    with pgcluster.running() as cluster:
        cluster.execute('CREATE DATABASE "peer"')
        cluster.execute("CREATE EXTENSION pg_stat_statements", "peer")
        server = MailslotPg(
            "mailslot-pg",
            tmp / "work",
            tmp,
            cert=chain,
            key=key,
            workers=1,
            dsn=cluster.dsn("peer"),
            pg_pid=cluster.pid,
        )
        server.upgrade()
        drops = {u: corpus.load_idents(i) for i, u in enumerate([*USERS, PROBE])}
        pgstore.load(server.dsn, data, [*USERS, PROBE, "big"], drops, tmp / "home")
        pgstore.bulk_maildrop(server.dsn, data, "big", corpus.bigbox_idents(50))
        server.start()
        try:
            yield Peer(server, ca, data)
        finally:
            server.stop()


def _fetch_all(peer: Peer, user: str) -> list[tuple[int, int]]:
    client = poplib.POP3("127.0.0.1", peer.server.plain_port, timeout=10)
    try:
        client.user(user)
        client.pass_(corpus.PASSWORD)
        out = []
        for entry in client.list()[1]:
            number, size = (int(v) for v in entry.split())
            body = b"".join(line + b"\r\n" for line in client.retr(number)[1])
            assert len(body) == size
            out.append((size, zlib.crc32(body)))
        return out
    finally:
        client.quit()


def test_delivered_and_bulk_loaded_maildrops_serve_the_corpus(peer: Peer) -> None:
    """Both loaders (the store's delivery, the bigbox's bulk insert) give LIST sizes and
    bytes that are the corpus's, in order."""
    expected = peer.data.expected
    got = _fetch_all(peer, USERS[1])
    assert got == [(expected[i].size, expected[i].crc) for i in corpus.load_idents(1)]
    big = _fetch_all(peer, "big")
    assert big == [(expected[i].size, expected[i].crc) for i in corpus.bigbox_idents(50)]


def test_roundtrips_are_counted_from_pg_stat_statements(peer: Peer) -> None:
    """Four round trips for login, LIST, UIDL, RETR, QUIT, and four with a DELE: the
    penalty's reserve with the user's row; the penalty's reset, account, lease and listing;
    one chunk; the lease's release (with a DELE: the release with the fence, the deletion and
    the generation's bump, queries.QUIT_DELETE).  Before (issue 18): 7 and 11 (the reserve,
    the password, the reset, account and lease, listing, chunk, release; BEGIN, fence,
    delete, COMMIT); before the cluster-wide penalty existed: 5 and 9; before that, with
    asyncpg's default pool reset on release, 10 and 15, and with account and lease apart, 6
    and 10."""
    report = Report([peer.server.name])
    pool = ClientPool(1)
    try:
        bench = Bench(Settings(reps=1), pool, peer.data, report, str(peer.ca), USERS, [], PROBE)
        bench.roundtrips(peer.server, sessions=10)
    finally:
        pool.close()
    assert report.errors == []
    plain = report.figures["roundtrips no DELE per session"].median(peer.server.name)
    dele = report.figures["roundtrips with DELE per session"].median(peer.server.name)
    # A pooled connection made inside the window adds its one-off schema check and type
    # introspection: whole round trips per session are what is asserted.
    assert int(plain) == 4, report.notes
    assert int(dele) == 4, report.notes
