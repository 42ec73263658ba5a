"""The ``tls-login`` benchmark: its handshake floor, its summary, and its wiring in the runner.

No figure is checked against a number: the floor function is checked to count the server's
side of a real handshake and only that, the summary to divide the right medians, and the
suite to run against the benchmark's own mailslot with both certificates.
"""

from __future__ import annotations

import json
import math
import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from benchmarks import corpus, run, tls_logins
from benchmarks.loadgen import ClientPool
from benchmarks.report import Report
from benchmarks.scenarios import client_context
from benchmarks.servers import Mailslot
from benchmarks.suites import Bench, Settings
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mailslot.tls.context import TlsContexts

USERS = [f"l{n:03d}" for n in range(4)]
Leaves = dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def certificates(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Leaves]:
    return corpus.make_certificates(tmp_path_factory.mktemp("certs"))


def test_both_leaves_have_the_key_types_they_are_named_after(
    certificates: tuple[Path, Leaves],
) -> None:
    _ca, leaves = certificates
    assert set(leaves) == set(tls_logins.KINDS)
    kinds = {
        kind: x509.load_pem_x509_certificate(chain.read_bytes()).public_key()
        for kind, (chain, _key) in leaves.items()
    }
    ecdsa, rsa_key = kinds["ecdsa"], kinds["rsa"]
    assert isinstance(ecdsa, ec.EllipticCurvePublicKey) and ecdsa.curve.name == "secp256r1"
    assert isinstance(rsa_key, rsa.RSAPublicKey) and rsa_key.key_size == 2048


BURN = 0.02  # CPU seconds each of the client's handshake steps spends on top of its own


class _SlowClient:
    """A client context whose SSLObjects burn ``BURN`` of thread CPU per handshake call."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, **kw: Any) -> Any:
        return _SlowObject(self.context.wrap_bio(incoming, outgoing, **kw))


class _SlowObject:
    def __init__(self, tls: ssl.SSLObject) -> None:
        self.tls = tls

    def do_handshake(self) -> None:
        until = time.thread_time() + BURN
        while time.thread_time() < until:
            pass
        self.tls.do_handshake()


@pytest.mark.parametrize("kind", tls_logins.KINDS)
def test_floor_counts_the_server_side_of_a_full_handshake_only(
    certificates: tuple[Path, Leaves], kind: str
) -> None:
    """A client that burns CPU in every handshake step does not raise the server's figure."""
    ca, leaves = certificates
    server = TlsContexts(*leaves[kind]).current
    client = cast(ssl.SSLContext, _SlowClient(client_context(str(ca))))
    floor = tls_logins.handshake_floor(server, client, 3)
    assert math.isfinite(floor) and floor > 0
    assert floor < BURN  # the client's two steps per handshake would make it 2 * BURN


def test_floor_handshake_is_tls13_with_mailslot_context(certificates: tuple[Path, Leaves]) -> None:
    ca, leaves = certificates
    server = TlsContexts(*leaves["ecdsa"]).current
    made: list[ssl.SSLObject] = []
    wrap = server.wrap_bio

    class Spy:
        def wrap_bio(self, *args: Any, **kw: Any) -> ssl.SSLObject:
            made.append(wrap(*args, **kw))
            return made[-1]

    tls_logins.handshake_server_cpu(cast(ssl.SSLContext, Spy()), client_context(str(ca)))
    assert made[0].server_side and made[0].version() == "TLSv1.3"


def test_floor_raises_when_the_handshake_fails(
    certificates: tuple[Path, Leaves],
) -> None:
    _ca, leaves = certificates
    server = TlsContexts(*leaves["rsa"]).current
    stranger = ssl.create_default_context()  # does not trust the benchmark's CA
    with pytest.raises(ssl.SSLError):
        tls_logins.handshake_server_cpu(server, stranger)


def _figures(report: Report, server: str, values: dict[str, float]) -> None:
    for name, value in values.items():
        report.add(name, "ms", "lower", server, value)


def test_summary_divides_the_medians() -> None:
    report = Report(["mailslot", "dovecot-sc0", "twisted"])
    for value in (0.2, 0.3, 0.25):
        _figures(report, "mailslot", {"tls-login plain server CPU/op": value})
    for value in (0.5, 0.5, 0.9):
        _figures(report, "mailslot", {"tls-login rsa handshake floor": value})
    for value in (0.9, 1.0, 5.0):
        _figures(report, "mailslot", {"tls-login rsa server CPU/op": value})
    for server, rates in {
        "mailslot": (900.0, 1000.0, 1100.0),
        "dovecot-sc0": (400.0, 500.0, 600.0),
        "twisted": (700.0, 800.0, 100.0),
    }.items():
        for rate in rates:
            report.add("tls-login rsa rate", "logins/s", "higher", server, rate)
    tls_logins.summarise(report)
    figures = report.figures
    assert figures["tls-login rsa floor (handshake + plain login)"].median("mailslot") == 0.75
    assert figures["tls-login rsa CPU/login / floor"].median("mailslot") == pytest.approx(1 / 0.75)
    # Medians: twisted 700, dovecot-sc0 500: twisted is the best peer.
    assert figures["tls-login rsa rate / best peer"].median("mailslot") == pytest.approx(1000 / 700)
    assert any("(twisted)" in note and "missed" in note for note in report.notes)
    assert any("1.33x, target <= 1.2x missed" in note for note in report.notes)
    assert not any(name.startswith("tls-login ecdsa") for name in figures)


def test_profile_summary_reads_a_speedscope_profile(tmp_path: Path) -> None:
    """Busy samples only: the loop waiting in epoll_pwait is left out of every share."""
    doc = {
        "shared": {
            "frames": [
                {"name": "main", "file": "/x/run.py", "line": 1},
                {"name": "do_handshake", "file": "/usr/lib/python3.11/ssl.py", "line": 2},
                {"name": "read", "file": "/src/mailslot/server/session.py", "line": 3},
                {"name": "EVP_DigestSignFinal", "file": "/usr/lib/libcrypto.so.3", "line": 0},
                {"name": "epoll_pwait", "file": "/usr/lib/libc.so.6", "line": 0},
            ]
        },
        "profiles": [
            {
                "type": "sampled",
                "samples": [[0, 1], [0, 1, 3], [0, 2], [0], [0, 4], [0, 4]],
                "weights": [1, 1, 1, 1, 5, 5],
            }
        ],
    }
    path = tmp_path / "p.speedscope.json"
    path.write_text(json.dumps(doc))
    top = tls_logins.top_frames(path)
    assert ("main (run.py:1)", 25.0, 100.0) in top
    assert ("do_handshake (ssl.py:2)", 25.0, 50.0) in top
    assert not any(frame.startswith("epoll_pwait") for frame, _, _ in top)
    assert tls_logins.shares(path) == {
        "python": 50.0,  # main and do_handshake: not mailslot's files
        "libcrypto.so.3": 25.0,
        "mailslot": 25.0,
    }
    assert tls_logins.main([str(path)]) == 0


def test_the_runner_knows_the_suite() -> None:
    args = run.parse_args(["--only", "tls-login", "--servers", "mailslot,twisted"])
    assert args.only == ["tls-login"]
    assert "tls-login" in run.parse_args([]).only  # part of the full run
    for name in run.BENCHMARKS:  # the runner calls each by its method's name
        assert callable(getattr(Bench, name.replace("-", "_")))


@dataclass
class Bed:
    server: Mailslot
    ca: Path
    leaves: Leaves
    data: corpus.Corpus


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    """The benchmark's own mailslot (benchmarks.servers.Mailslot), serving the RSA leaf."""
    data = corpus.Corpus(tmp_path, os.getuid(), os.getgid())
    ca, leaves = corpus.make_certificates(tmp_path)
    passwd = tmp_path / "users"
    corpus.write_passwd(passwd, USERS, tmp_path / "home")
    mail = tmp_path / "mail"
    (tmp_path / "work").mkdir()
    mail.mkdir()
    for i, user in enumerate(USERS):
        data.make_maildir(mail, user, corpus.load_idents(i))
    chain, key = leaves["rsa"]
    server = Mailslot("mailslot", tmp_path / "work", mail, passwd=passwd, cert=chain, key=key)
    server.start()
    try:
        yield Bed(server, ca, leaves, data)
    finally:
        server.stop()


def _served_key(port: int, ca: Path) -> object:
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).public_key()


def test_suite_measures_both_certificates_and_ends_on_the_first(bed: Bed) -> None:
    server = bed.server
    report = Report([server.name])
    pool = ClientPool(1)
    try:
        settings = Settings(reps=1, duration=0.3, concurrency=2, handshakes=5)
        bench = Bench(
            settings,
            pool,
            bed.data,
            report,
            str(bed.ca),
            USERS,
            [],
            USERS[3],
            certificates=bed.leaves,
        )
        bench.tls_login(server)
    finally:
        pool.close()
    assert report.errors == []
    for kind in tls_logins.KINDS:
        for figure in ("handshake floor", "server CPU/op", "rate"):
            assert report.figures[f"tls-login {kind} {figure}"].median(server.name) > 0
    assert report.figures["tls-login plain server CPU/op"].median(server.name) > 0
    assert (server.cert, server.key) == bed.leaves["rsa"]
    assert isinstance(_served_key(server.tls_port, bed.ca), rsa.RSAPublicKey)
    tls_logins.summarise(report)
    assert "tls-login ecdsa CPU/login / floor" in report.figures


def test_restart_serves_the_other_certificate(bed: Bed) -> None:
    Bench._restart(bed.server, *bed.leaves["ecdsa"])
    assert isinstance(_served_key(bed.server.tls_port, bed.ca), ec.EllipticCurvePublicKey)
