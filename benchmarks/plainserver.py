"""The login benchmarks' server: ``mailslot serve`` on one plaintext 127.0.0.1 listener.

``auth_attack``, ``auth_timing`` and ``nat_logins`` time USER/PASS (RFC 1939 section 7) over
bare sockets, so they share this server (users from a passwd-file in the run's directory,
Maildirs under it, plaintext allowed without TLS, its log in ``server.log``) and the
CRLF line reader of their clients.  Mailslot is whatever ``PYTHONPATH`` points at.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.servers import free_port


@dataclass(frozen=True)
class PlainServer:
    port: int
    log: Path  # the server's stdout and stderr; complete once the ``with`` has ended


def read_line(reader: socket.SocketIO) -> bytes:
    """One reply line with its CRLF, read a byte at a time (nothing is read past it)."""
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = reader.read(1)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def wait_for_greeting(port: int, deadline: float = 60.0) -> None:
    """The server reads (and times) the passwd-file before it listens: wait for it."""
    until = time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                read_line(socket.SocketIO(sock, "rb"))
                return
        except OSError:
            if time.monotonic() > until:
                raise
            time.sleep(0.1)


def config_text(
    root: Path, port: int, workers: int, penalty: bool, limits: Mapping[str, int]
) -> str:
    """``penalty`` False turns the per-address failure penalty off (the hash pool alone)."""
    return (
        f"[server]\nworkers = {workers}\n"
        # As root (CI, this machine) a server without [server] user wants a reason.
        + ('run_as_root = "a benchmark"\n' if os.geteuid() == 0 else "")
        + f'[[listener]]\naddress = "127.0.0.1"\nport = {port}\ntls = "none"\n'
        + '[auth]\npasswd_file = "users"\nallow_plaintext_without_tls = true\n'
        + ("" if penalty else "failure_delay = 0\nfailure_delay_max = 0\n")
        + ("[limits]\n" if limits else "")
        + "".join(f"{name} = {value}\n" for name, value in limits.items())
        + f'[store]\nmaildir = "{root}/mail/{{user}}/Maildir"\n'
    )


@contextmanager
def serving(
    root: Path,
    passwd: str,
    *,
    workers: int,
    penalty: bool = True,
    limits: Mapping[str, int] | None = None,
) -> Iterator[PlainServer]:
    """Writes ``passwd`` (passwd-file lines) and the config under ``root`` and starts the
    server; stops it when the ``with`` ends.  It may not listen yet: see wait_for_greeting."""
    (root / "users").write_text(passwd)
    port = free_port()
    config = root / "mailslot.toml"
    config.write_text(config_text(root, port, workers, penalty, limits or {}))
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mailslot", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield PlainServer(port, log_path)
        finally:
            server.terminate()
            server.wait()
