"""``python -m benchmarks.attacks``: the pre-login attacks of issue 15 against ``mailslot serve``.

Each attack runs against a fresh server (``server.workers = 2``, a throwaway directory) on
127.0.0.1 and prints what it measured:

- ``trickle-capa``: ``CAPA\\r\\n`` one byte every ``--interval`` seconds after the greeting;
  how long the connection stays open before login (capped at ``--cap``).
- ``trickle-proxy``: a PROXY v1 header one byte at a time on a PROXY listener.
- ``trickle-hello``: an implicit-TLS ClientHello one byte at a time.
- ``flood``: ``--flood`` silent connections from 127.0.0.1 to an implicit-TLS listener and to
  a PROXY listener; how many the server still holds after a second (``max_connections_per_ip``
  is 50 per worker, so 100 with two workers).
- ``fdflood``: the server under a 1,024-descriptor limit (``max_connections_per_ip`` is
  ``--fd-per-ip``), ``--fd-flood`` silent implicit-TLS
  connections from 127.0.0.1 held open, then ``--probes`` clients from 127.0.0.2 that each
  handshake, read the greeting and QUIT: how many fail while the flood is held and after it.
- ``emfile``: one worker, its open-file limit lowered while it runs (``prlimit``) to 10 more
  than it holds, 40 silent plain connections from 127.0.0.1: how many are greeted, dropped
  (closed with nothing sent) or left waiting in the queue, the server's CPU time over 2 s,
  whether 127.0.0.2 is served during and after the flood, and the log lines about accept.

Traffic goes only to the loopback addresses of this machine; every loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import select
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.server import Listener, MailslotServer
from tests.support.tls import TlsFiles, make_tls_files

ATTACKS = ("trickle-capa", "trickle-proxy", "trickle-hello", "flood", "fdflood", "emfile")


@contextlib.contextmanager
def server(
    tmp: Path, tls: TlsFiles, name: str, listeners: tuple[Listener, ...], limits: dict[str, float]
) -> Iterator[MailslotServer]:
    workers = {"server": {"workers": 2}}
    srv = MailslotServer(
        tmp / name, tls, listeners=listeners, limits=limits, extra_sections=workers
    )
    with srv:
        yield srv


def held_while_trickling(
    address: tuple[str, int], first: bytes, data: bytes, interval: float, cap: float
) -> float:
    """Seconds from connect until the server closes, sending ``data`` one byte per interval."""
    started = time.monotonic()
    with socket.create_connection(address, timeout=5) as sock:
        if first:
            sock.recv(4096)  # the greeting
        sock.setblocking(False)
        position = 0
        while time.monotonic() - started < cap:
            try:
                sock.send(data[position % len(data) : position % len(data) + 1])
            except OSError:
                break
            position += 1
            readable, _, _ = select.select([sock], [], [], interval)
            if readable:
                if _closed(sock):
                    break
                # A reply (to CAPA) arrived; wait out the rest of the interval.
                rest = interval - (time.monotonic() - started) % interval
                readable, _, _ = select.select([sock], [], [], rest)
                if readable and _closed(sock):
                    break
        return time.monotonic() - started


def _closed(sock: socket.socket) -> bool:
    """Reads what the server sent a readable ``sock``: has it closed the connection?"""
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


def client_hello() -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def silent_connections(
    address: tuple[str, int], count: int, source: str = "127.0.0.1"
) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(address)
        socks.append(sock)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (nothing read yet, no EOF, no reset)."""
    count = 0
    for sock in socks:
        try:
            data = sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            count += 1
            continue
        except OSError:
            continue
        if data and not data.startswith(b"-ERR"):
            count += 1  # a greeting: held
    return count


def probe(address: tuple[str, int], context: ssl.SSLContext, source: str) -> bool:
    """One implicit-TLS client from ``source``: handshake, greeting, QUIT."""
    try:
        with (
            socket.create_connection(address, timeout=5, source_address=(source, 0)) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            reader = sock.makefile("rb")
            if not reader.readline().startswith(b"+OK"):
                return False
            sock.sendall(b"QUIT\r\n")
            return reader.readline().startswith(b"+OK")
    except OSError:
        return False


def run(args: argparse.Namespace, tmp: Path) -> None:
    tls = make_tls_files(tmp / "tls")
    limits = {"login_timeout": args.login_timeout}
    if "trickle-capa" in args.only:
        with server(tmp, tls, "capa", (Listener("starttls"),), limits) as srv:
            held = held_while_trickling(srv.starttls, b"+OK", b"CAPA\r\n", args.interval, args.cap)
        timeout = args.login_timeout
        print(f"trickle-capa: held {held:.1f} s before login (login_timeout {timeout:g})")
    if "trickle-proxy" in args.only:
        listeners: tuple[Listener, ...] = (Listener("starttls", proxy_protocol=True),)
        with server(tmp, tls, "proxy", listeners, limits) as srv:
            header = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 110\r\n"
            held = held_while_trickling(srv.starttls, b"", header, args.interval, args.cap)
        print(f"trickle-proxy: held {held:.1f} s before the header was complete")
    if "trickle-hello" in args.only:
        with server(tmp, tls, "hello", (Listener("implicit"),), limits) as srv:
            held = held_while_trickling(srv.implicit, b"", client_hello(), args.interval, args.cap)
        print(f"trickle-hello: held {held:.1f} s before the handshake was complete")
    if "flood" in args.only:
        listeners = (Listener("implicit"), Listener("starttls", proxy_protocol=True))
        with server(tmp, tls, "flood", listeners, {}) as srv:
            for name, address in (("implicit", srv.implicit), ("proxy", srv.starttls)):
                socks = silent_connections(address, args.flood)
                time.sleep(1.0)  # let the server accept and judge them
                print(f"flood {name}: {still_open(socks)} of {args.flood} silent connections held")
                for sock in socks:
                    sock.close()
                time.sleep(1.0)
    if "fdflood" in args.only:
        srv = MailslotServer(
            tmp / "fdflood",
            tls,
            listeners=(Listener("implicit"),),
            limits={"max_connections_per_ip": args.fd_per_ip},
            extra_sections={"server": {"workers": 2}},
            file_limit=1024,
        )
        srv.start()
        context = tls.client_context()
        try:
            socks = silent_connections(srv.implicit, args.fd_flood)
            time.sleep(1.0)
            held = still_open(socks)
            started = time.monotonic()
            failed = sum(not probe(srv.implicit, context, "127.0.0.2") for _ in range(args.probes))
            took = time.monotonic() - started
            print(
                f"fdflood: {held} of {args.fd_flood} silent connections held; "
                f"{failed} of {args.probes} clients from 127.0.0.2 failed during it ({took:.1f} s)"
            )
            for sock in socks:
                sock.close()
            time.sleep(1.0)
            failed = sum(not probe(srv.implicit, context, "127.0.0.2") for _ in range(args.probes))
            print(f"fdflood: {failed} of {args.probes} failed after the flood was closed")
        finally:
            srv.stop()
        log = srv.log()
        lines = [line for line in log.splitlines() if "refused" in line or "descriptor" in line]
        print(f"fdflood: {len(lines)} log lines about refusals or descriptors")
        for line in lines[:5]:
            print("  ", line[:200])
    if "emfile" in args.only:
        emfile(tmp, tls)


def emfile(tmp: Path, tls: TlsFiles) -> None:
    srv = MailslotServer(
        tmp / "emfile",
        tls,
        listeners=(Listener("none"),),
        allow_plaintext=True,
        limits={"max_connections_per_ip": 100000, "login_timeout": 60},
    )
    with srv:
        assert srv.process is not None
        pid = srv.process.pid
        address = srv.listener("none")
        spare = len(os.listdir(f"/proc/{pid}/fd")) + 10
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (spare, spare))
        flood = [socket.create_connection(address) for _ in range(40)]
        started = cpu_seconds(pid)
        time.sleep(2.0)
        cpu = cpu_seconds(pid) - started
        greeted = dropped = waiting = 0
        for sock in flood:
            if not select.select([sock], [], [], 0)[0]:
                waiting += 1
                continue
            try:
                data = sock.recv(100, socket.MSG_PEEK)
            except OSError:
                data = b""
            if data.startswith(b"+OK"):
                greeted += 1
            else:
                dropped += 1
        during = plain_probe(address)
        for sock in flood:
            sock.close()
        time.sleep(1.0)
        after = plain_probe(address)
    print(
        f"emfile: greeted {greeted}, dropped {dropped}, waiting {waiting}; server CPU {cpu:.2f} s "
        f"over 2 s; 127.0.0.2 served during the flood: {during}, after it: {after}"
    )
    lines = [line for line in srv.log().splitlines() if "accept" in line.lower()]
    print(f"emfile: {len(lines)} log lines about accept")
    for line in lines[:3]:
        print("  ", line[:200])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plain_probe(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=3, source_address=("127.0.0.2", 0)) as s:
            return s.makefile("rb").readline().startswith(b"+OK")
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attacks", description=__doc__)
    p.add_argument("--only", default=",".join(ATTACKS), help="comma-separated attacks")
    p.add_argument("--login-timeout", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between trickled bytes")
    p.add_argument("--cap", type=float, default=40.0, help="give up trickling after this long")
    p.add_argument("--flood", type=int, default=2000)
    p.add_argument("--fd-flood", type=int, default=3000)
    p.add_argument("--probes", type=int, default=50)
    p.add_argument("--fd-per-ip", type=int, default=50, help="max_connections_per_ip in fdflood")
    args = p.parse_args(argv)
    args.only = args.only.split(",")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the flooding client's sockets
    with tempfile.TemporaryDirectory(prefix="mailslot-attacks-") as tmp:
        run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
