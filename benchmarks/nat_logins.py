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
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _line(reader: socket.SocketIO) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = reader.read(1)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _login(
    port: int, user: str, password: str, start: threading.Barrier, done: list[tuple[float, bytes]]
) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        reader = socket.SocketIO(sock, "rb")
        _line(reader)
        start.wait()
        started = time.perf_counter()
        sock.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
        _line(reader)
        reply = _line(reader)
        done.append((time.perf_counter() - started, reply))
        sock.sendall(b"QUIT\r\n")
        _line(reader)


def _wait_for_greeting(port: int, deadline: float = 60.0) -> None:
    """The server reads (and times) the passwd-file before it listens: wait for it."""
    until = time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                _line(socket.SocketIO(sock, "rb"))
                return
        except OSError:
            if time.monotonic() > until:
                raise
            time.sleep(0.1)


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
        (root / "users").write_text(
            "".join(f"{name}:{_hash(password, args.scheme)}\n" for name, password in users)
        )
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        (root / "mailslot.toml").write_text(
            f"[server]\nworkers = {args.workers}\n"
            # As root (CI, this machine) a server without [server] user wants a reason.
            + ('run_as_root = "a benchmark"\n' if os.geteuid() == 0 else "")
            + f'[[listener]]\naddress = "127.0.0.1"\nport = {port}\n'
            f'tls = "none"\n[auth]\npasswd_file = "users"\nallow_plaintext_without_tls = true\n'
            f'[store]\nmaildir = "{root}/mail/{{user}}/Maildir"\n'
        )
        log_path = root / "server.log"
        totals: list[float] = []
        failed: list[int] = []
        with open(log_path, "wb") as log:
            config = str(root / "mailslot.toml")
            server = subprocess.Popen(
                [sys.executable, "-m", "mailslot", "serve", "--config", config],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait_for_greeting(port)
                for round_ in range(args.rounds):
                    start = threading.Barrier(len(users))
                    done: list[tuple[float, bytes]] = []
                    threads = [
                        threading.Thread(target=_login, args=(port, name, pw, start, done))
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
            finally:
                server.terminate()
                server.wait()
        text = log_path.read_text(errors="replace")
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
