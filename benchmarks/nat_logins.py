"""Right passwords at once from one address: a mail client starting with several accounts.

Starts ``mailslot serve`` with two workers and the default failure penalty (2 s doubling to
15 s, no free attempts), then, ``--rounds`` times, opens ``--accounts`` connections from
127.0.0.1, waits until every one is greeted, and sends ``USER``/``PASS`` with the *right*
password on all of them at the same moment (as Thunderbird does with six accounts on one
server, or a family behind one NAT polling at once).  Per round it prints the time from that
moment until the last ``+OK`` and how many logins were answered ``-ERR``; at the end the
medians, and the server log's count of ``login refused, too many failures`` (attempts the
penalty answered without a password check)::

    PYTHONPATH=src python -m benchmarks.nat_logins --accounts 6 --rounds 5
    PYTHONPATH=src python -m benchmarks.nat_logins --scheme SHA512-CRYPT  # slower checks

Rounds are ``--pause`` seconds apart, so each starts from an address whose logins all
succeeded (a success forgets the address).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.plainserver import read_line, serving, wait_for_greeting


def _login(
    port: int, user: str, password: str, start: threading.Barrier, done: list[tuple[float, bytes]]
) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        reader = socket.SocketIO(sock, "rb")
        read_line(reader)
        start.wait()
        started = time.perf_counter()
        sock.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
        read_line(reader)
        reply = read_line(reader)
        done.append((time.perf_counter() - started, reply))
        sock.sendall(b"QUIT\r\n")
        read_line(reader)


def _hash(password: str, scheme: str) -> str:
    if scheme == "PLAIN":
        return "{PLAIN}" + password
    from mailslot.auth import schemes

    return schemes.hash_password(password, scheme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pause", type=float, default=1.0)
    parser.add_argument("--scheme", default="PLAIN")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    users = [(f"user{n}", f"secret-{n}") for n in range(1, args.accounts + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        passwd = "".join(f"{name}:{_hash(password, args.scheme)}\n" for name, password in users)
        totals: list[float] = []
        failed: list[int] = []
        with serving(root, passwd, workers=args.workers) as server:
            wait_for_greeting(server.port)
            for round_ in range(args.rounds):
                start = threading.Barrier(len(users))
                done: list[tuple[float, bytes]] = []
                threads = [
                    threading.Thread(target=_login, args=(server.port, name, pw, start, done))
                    for name, pw in users
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                total = max(seconds for seconds, _ in done)
                errors = sum(not reply.startswith(b"+OK") for _, reply in done)
                totals.append(total)
                failed.append(errors)
                latencies = " ".join(f"{s:.3f}" for s, _ in sorted(done))
                print(
                    f"round {round_ + 1}: all answered in {total:.3f} s, {errors} -ERR"
                    f" (each: {latencies} s)"
                )
                time.sleep(args.pause)
        text = server.log.read_text(errors="replace")
    refused = text.count("login refused, too many failures")
    print(
        f"{args.accounts} right-password logins at once, {args.scheme}, {args.workers} workers,"
        f" {args.rounds} rounds: median {statistics.median(totals):.3f} s until all answered,"
        f" median {statistics.median(failed):g} answered -ERR per round;"
        f" {refused} refused unchecked in all"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
