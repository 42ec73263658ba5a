"""What a TLS login costs a server that does nothing but the dialogue: the part of
``tls-login``'s extra CPU that comes with doing TLS records and socket I/O from Python asyncio.

``python -m benchmarks.tls_minimal`` starts :func:`serve` in a child process: one uvloop
loop that answers every line with ``+OK`` (``QUIT`` with ``+OK`` and a close), no
authentication, no store, no log, no limits, on a plaintext and an implicit-TLS port
(RFC 8314 section 3.3) with mailslot's own ``SSLContext`` (:class:`TlsContexts`, as
``mailslot serve`` builds it) and the ECDSA P-256 or RSA-2048 certificate of ``tls-login``.
The ``login`` load client (the same job as ``tls-login``: connect, full TLS 1.3 handshake,
greeting, USER, PASS, QUIT, ``close_notify`` both ways) runs against each port in turn, and
the server's CPU per login is read from ``/proc`` as in every load benchmark.

The TLS port's transport is selectable: ``layer`` is mailslot's own
(:class:`mailslot.server.tlslayer.TlsTransport`), ``uvloop`` the loop's ``SSLProtocol``
(``create_server(ssl=...)``, what ``start_tls()`` uses).  With the in-process handshake floor
of :mod:`benchmarks.tls_logins`, it prints per certificate: plain, TLS, and TLS minus plain
minus the floor, the cost of the TLS records and the extra reads and writes with nothing of a
POP3 server's own on top; medians of ``--reps``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks import corpus, proctree, tls_logins
from benchmarks.loadgen import ClientPool
from benchmarks.pop3client import TlsMode
from benchmarks.scenarios import Job, client_context


class _Replier(asyncio.Protocol):
    """``+OK`` to each line; ``QUIT``: ``+OK``, then close (which sends close_notify)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.WriteTransport = transport  # type: ignore[assignment]
        self._transport.write(b"+OK ready\r\n")

    def data_received(self, data: bytes) -> None:
        for line in data.split(b"\r\n")[:-1]:
            if line == b"QUIT":
                self._transport.write(b"+OK bye\r\n")
                self._transport.close()
                return
            self._transport.write(b"+OK\r\n")

    def eof_received(self) -> bool:
        return False


def serve(plain_port: int, tls_port: int, chain: Path, key: Path, transport: str) -> None:
    """Serve until killed (the child process of :func:`main`)."""
    import uvloop

    from mailslot.server.tlslayer import TlsTransport
    from mailslot.tls.context import TlsContexts

    context = TlsContexts(chain, key).current

    def handshaken(tls: TlsTransport, error: BaseException | None) -> None:
        if error is None:
            app = _Replier()
            tls.set_protocol(app)
            app.connection_made(tls)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(_Replier, "127.0.0.1", plain_port, backlog=1024)
        if transport == "layer":
            await loop.create_server(
                lambda: TlsTransport(loop, context, handshaken, 10.0, loop.time() + 3600),
                "127.0.0.1",
                tls_port,
                backlog=1024,
            )
        else:
            await loop.create_server(_Replier, "127.0.0.1", tls_port, ssl=context, backlog=1024)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(run())


def _measure(pool: ClientPool, pid: int, job: Job, perf: Path | None = None) -> float:
    """Server CPU ms per login for one load run; with ``perf``, ``perf record`` it there."""
    recorder = None
    if perf is not None:
        perf.parent.mkdir(parents=True, exist_ok=True)
        command = ["perf", "record", "-q", "-F", "1999", "-g", "-p", str(pid), "-o", str(perf)]
        recorder = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    cpu0 = proctree.cpu_seconds(proctree.tree(pid))
    res = pool.run(job)
    cpu1 = proctree.cpu_seconds(proctree.tree(pid))
    if recorder is not None:
        recorder.send_signal(2)
        recorder.wait(30)
    if res.errors or not res.ops:
        raise RuntimeError(f"load failed: {res.describe_errors()}")
    return (cpu1 - cpu0) / res.ops * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tls_minimal")
    parser.add_argument("--transport", choices=("layer", "uvloop"), default="layer")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--perf", type=Path, help="perf record the server into DIR")
    parser.add_argument("--serve", nargs=4, metavar=("PLAIN", "TLS", "CHAIN", "KEY"))
    args = parser.parse_args(argv)
    if args.serve:
        plain, tls, chain, key = args.serve
        serve(int(plain), int(tls), Path(chain), Path(key), args.transport)
        return 0
    from mailslot.tls.context import TlsContexts

    pool = ClientPool(args.clients)
    users = [f"u{i}" for i in range(args.concurrency)]
    with tempfile.TemporaryDirectory() as tmp:
        ca, leaves = corpus.make_certificates(Path(tmp))
        for kind in tls_logins.KINDS:
            chain, key = leaves[kind]
            ports = [_free_port(), _free_port()]
            command = [sys.executable, "-m", "benchmarks.tls_minimal", "--transport"]
            server = subprocess.Popen(
                [*command, args.transport, "--serve", *map(str, ports), str(chain), str(key)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert server.stdout is not None and server.stdout.readline() == "ready\n"
                figures: dict[str, list[float]] = {"plain": [], "tls": [], "floor": []}
                for _ in range(args.reps):
                    modes: tuple[tuple[TlsMode, int], ...] = (
                        ("none", ports[0]),
                        ("implicit", ports[1]),
                    )
                    for mode, port in modes:
                        job = Job("login", port, mode, str(ca), users, {}, args.duration)
                        pool.run(replace(job, duration=1.0))  # unmeasured, as tls-login
                        name = "plain" if mode == "none" else "tls"
                        perf = args.perf / f"{kind}-{name}.perf" if args.perf else None
                        figures[name].append(_measure(pool, server.pid, job, perf))
                    floor = tls_logins.handshake_floor(
                        TlsContexts(chain, key).current, client_context(str(ca)), 400
                    )
                    figures["floor"].append(floor * 1e3)
            finally:
                server.kill()
                server.wait()
            med = {name: statistics.median(values) for name, values in figures.items()}
            extra = med["tls"] - med["plain"] - med["floor"]
            print(
                f"{kind} ({args.transport}): plain {med['plain']:.3f} ms, TLS {med['tls']:.3f} ms,"
                f" handshake floor {med['floor']:.3f} ms; TLS - plain - floor {extra:.3f} ms;"
                f" TLS / (floor + plain) {med['tls'] / (med['floor'] + med['plain']):.2f}x"
            )
            for name, values in figures.items():
                print(f"  {name}: " + " ".join(f"{v:.3f}" for v in values))
    pool.close()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    raise SystemExit(main())
