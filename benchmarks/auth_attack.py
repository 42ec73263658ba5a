"""Password guessing from one address: how many passwords does the server check per second?

Starts ``mailslot serve`` with two workers and the default failure penalty (2 s doubling to
15 s), then runs ``--connections`` guessers from 127.0.0.1 for ``--seconds``: each sends
``USER alice`` / ``PASS <wrong>`` as fast as it is answered, reconnecting when closed.  The
checks are counted from the server's log ("login failed" is written once per checked
password, "login refused" an attempt the penalty refused, "password check refused" one the
hash pool refused before its "login failed"), so nothing is inferred from timing.
``--drop 0.25`` makes each guesser give up on an attempt after 0.25 s and reconnect.
``--scheme ARGON2ID`` stores alice's password with that scheme; ``--victim`` meanwhile logs
bob ({PLAIN}) in and out from 127.0.0.2, one login at a time, and prints its latency::

    PYTHONPATH=src python -m benchmarks.auth_attack --connections 50 --seconds 60
    PYTHONPATH=src python -m benchmarks.auth_attack --connections 0 --victim  # unloaded
    PYTHONPATH=src python -m benchmarks.auth_attack --connections 200 --scheme ARGON2ID --victim
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.plainserver import read_line, serving


def _guess(port: int, until: float, drop: float | None) -> None:
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.settimeout(max(1.0, until - time.monotonic()))
                reader = socket.SocketIO(sock, "rb")
                read_line(reader)
                while time.monotonic() < until:
                    sock.sendall(b"USER alice\r\n")
                    read_line(reader)
                    if drop is not None:
                        sock.settimeout(drop)
                    sock.sendall(b"PASS guess\r\n")
                    read_line(reader)
        except OSError:
            continue


def _victim(port: int, until: float, latencies: list[float], errors: list[str]) -> None:
    """bob from 127.0.0.2: connect, USER, PASS, QUIT; the time to PASS's +OK."""
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            with socket.create_connection(
                ("127.0.0.1", port), timeout=120, source_address=("127.0.0.2", 0)
            ) as s:
                reader = socket.SocketIO(s, "rb")
                read_line(reader)
                s.sendall(b"USER bob\r\nPASS bob-secret\r\n")
                read_line(reader)
                reply = read_line(reader)
                latencies.append(time.perf_counter() - started)
                if not reply.startswith(b"+OK"):
                    errors.append(reply.decode("latin-1").strip())
                s.sendall(b"QUIT\r\n")
                read_line(reader)
        except OSError as exc:
            errors.append(f"{type(exc).__name__} after {time.perf_counter() - started:.1f} s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--drop", type=float, default=None)
    parser.add_argument("--scheme", default="PLAIN")
    parser.add_argument("--victim", action="store_true")
    parser.add_argument(
        "--no-penalty", action="store_true", help="failure_delay = 0: the hash pool alone"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.scheme == "PLAIN":
            alice = "{PLAIN}alice-secret"
        else:
            from mailslot.auth import schemes

            alice = schemes.hash_password("alice-secret", args.scheme)
        passwd = f"alice:{alice}\nbob:{{PLAIN}}bob-secret\n"
        limits = {"max_connections_per_ip": 1000, "max_bad_commands_before_login": 100000}
        with serving(root, passwd, workers=2, penalty=not args.no_penalty, limits=limits) as server:
            time.sleep(2.0)
            until = time.monotonic() + args.seconds
            threads = [
                threading.Thread(target=_guess, args=(server.port, until, args.drop), daemon=True)
                for _ in range(args.connections)
            ]
            latencies: list[float] = []
            errors: list[str] = []
            if args.victim:
                victim = threading.Thread(
                    target=_victim, args=(server.port, until, latencies, errors), daemon=True
                )
                threads.append(victim)
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        text = server.log.read_text(errors="replace")
    # A check the hash pool refused (the client had too many waiting) is logged by the pool
    # and then as a failed login: it was not checked.
    pool_refused = text.count("password check refused")
    checked = text.count("login failed: user=alice") - pool_refused
    refused = text.count("login refused, too many failures") + pool_refused
    print(
        f"{args.connections} connections, {args.seconds:g} s: {checked} passwords checked "
        f"({checked / args.seconds:.2f}/s, {checked * 3600 / args.seconds:.0f}/hour), "
        f"{refused} attempts refused unchecked"
    )
    if args.victim:
        cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
        print(
            f"victim (127.0.0.2, PLAIN): {len(latencies)} logins, p50 {cuts[49] * 1000:.1f} ms, "
            f"p99 {cuts[98] * 1000:.1f} ms, max {max(latencies, default=0) * 1000:.1f} ms, "
            f"{len(errors)} errors {errors[:3]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
