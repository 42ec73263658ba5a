"""``benchmarks.tls_minimal``: its server answers the ``login`` client's whole dialogue, plain
and over implicit TLS through either transport, without one wrong reply.

No figure is checked: the script's numbers are only worth reading if every login completed
(RFC 8314 section 3.3, the greeting after the handshake; ``close_notify`` both ways).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from benchmarks import corpus
from benchmarks.loadgen import ClientPool
from benchmarks.pop3client import TlsMode
from benchmarks.scenarios import Job

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("transport", ["layer", "uvloop"])
def test_the_minimal_server_serves_the_login_dialogue(tmp_path: Path, transport: str) -> None:
    ca, leaves = corpus.make_certificates(tmp_path)
    chain, key = leaves["ecdsa"]
    ports = [_free_port(), _free_port()]
    command = [sys.executable, "-m", "benchmarks.tls_minimal", "--transport", transport]
    server = subprocess.Popen(
        [*command, "--serve", *map(str, ports), str(chain), str(key)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    pool = ClientPool(1)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        modes: tuple[tuple[TlsMode, int], ...] = (("none", ports[0]), ("implicit", ports[1]))
        for mode, port in modes:
            started = time.monotonic()
            res = pool.run(Job("login", port, mode, str(ca), ["a", "b"], {}, 0.5))
            assert res.errors == 0, res.describe_errors()
            assert res.ops > 0, mode
            assert time.monotonic() - started < 30
    finally:
        pool.close()
        server.kill()
        server.wait()
