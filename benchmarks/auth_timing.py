"""How long a failed login takes, per kind of user: is an account's existence or scheme visible?

Starts ``mailslot serve`` (one worker, plaintext allowed on loopback, no failure penalty) on
a passwd-file holding one user per scheme, then sends ``USER x`` / ``PASS wrong`` for an
unknown user and for each scheme's user, round-robin, ``--tries`` times each, and prints the
median and p90 of the time from PASS to its ``-ERR`` per kind.  Mailslot's own source is
whatever ``PYTHONPATH`` points at, so the same script measures an older checkout::

    PYTHONPATH=src python -m benchmarks.auth_timing --tries 200
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

from passlib.hash import sha512_crypt

from benchmarks.plainserver import read_line, serving, wait_for_greeting
from mailslot.auth import schemes

KINDS = {
    "unknown": None,
    "plain": "PLAIN",
    "sha512": "SHA512-CRYPT",
    "bcrypt": "BLF-CRYPT",
    "argon2id": "ARGON2ID",
}


def _command(sock: socket.socket, reader: socket.SocketIO, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return read_line(reader)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = []
        for kind, scheme in KINDS.items():
            if scheme == "PLAIN":
                lines.append(f"{kind}:{{PLAIN}}right-{kind}\n")
            elif scheme == "SHA512-CRYPT":
                # Dovecot's rounds (doveadm pw), not libpass's default of 656,000.
                data = sha512_crypt.using(rounds=5000).hash("right-" + kind)
                lines.append(f"{kind}:{{SHA512-CRYPT}}{data}\n")
            elif scheme is not None:
                lines.append(f"{kind}:{schemes.hash_password('right-' + kind, scheme)}\n")
        with serving(root, "".join(lines), workers=1, penalty=False) as server:
            wait_for_greeting(server.port, deadline=30)
            times: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for _ in range(args.tries):
                for kind in KINDS:
                    with socket.create_connection(("127.0.0.1", server.port)) as sock:
                        reader = socket.SocketIO(sock, "rb")
                        read_line(reader)  # the greeting
                        _command(sock, reader, f"USER {kind}".encode())
                        started = time.perf_counter()
                        reply = _command(sock, reader, b"PASS wrong")
                        times[kind].append(time.perf_counter() - started)
                        assert reply.startswith(b"-ERR [AUTH]"), reply
                        sock.sendall(b"QUIT\r\n")
    medians = {kind: statistics.median(values) * 1000 for kind, values in times.items()}
    for kind, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1] * 1000
        print(f"{kind:9} median {medians[kind]:8.1f} ms  p90 {p90:8.1f} ms  ({len(values)} tries)")
    spread = max(medians.values()) - min(medians.values())
    print(f"spread of the medians: {spread:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
