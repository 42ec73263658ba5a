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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from passlib.hash import sha512_crypt

from mailslot.auth import schemes

KINDS = {
    "unknown": None,
    "plain": "PLAIN",
    "sha512": "SHA512-CRYPT",
    "bcrypt": "BLF-CRYPT",
    "argon2id": "ARGON2ID",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(sock: socket.socket, reader: socket.SocketIO, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return _line(reader)


def _line(reader: socket.SocketIO) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = reader.read(1)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


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
        (root / "users").write_text("".join(lines))
        port = _free_port()
        (root / "mailslot.toml").write_text(
            f'[[listener]]\naddress = "127.0.0.1"\nport = {port}\ntls = "none"\n'
            f'[auth]\npasswd_file = "users"\nallow_plaintext_without_tls = true\n'
            f"failure_delay = 0\nfailure_delay_max = 0\n"
            f'[store]\nmaildir = "{root}/mail/{{user}}/Maildir"\n'
        )
        log = open(root / "server.log", "wb")  # noqa: SIM115 - closed with the server
        server = subprocess.Popen(
            [sys.executable, "-m", "mailslot", "serve", "--config", str(root / "mailslot.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            times: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for _ in range(args.tries):
                for kind in KINDS:
                    with socket.create_connection(("127.0.0.1", port)) as sock:
                        reader = socket.SocketIO(sock, "rb")
                        _line(reader)  # the greeting
                        _command(sock, reader, f"USER {kind}".encode())
                        started = time.perf_counter()
                        reply = _command(sock, reader, b"PASS wrong")
                        times[kind].append(time.perf_counter() - started)
                        assert reply.startswith(b"-ERR [AUTH]"), reply
                        sock.sendall(b"QUIT\r\n")
        finally:
            server.terminate()
            server.wait()
            log.close()
    medians = {kind: statistics.median(values) * 1000 for kind, values in times.items()}
    for kind, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1] * 1000
        print(f"{kind:9} median {medians[kind]:8.1f} ms  p90 {p90:8.1f} ms  ({len(values)} tries)")
    spread = max(medians.values()) - min(medians.values())
    print(f"spread of the medians: {spread:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
