"""``python -m benchmarks.migrate_memory``: peak RSS of ``mailslot migrate`` with a big message.

Starts a private PostgreSQL (tests/support/postgres.py), builds one Maildir of ``--small``
small messages and one of ``--big-mib`` MiB (an attachment-like body of base64 lines), and
runs the real command, ``python -m mailslot migrate``, as a subprocess into a fresh database
per run: the copy, then ``--verify``.  The peak RSS of each subprocess is its own
``ru_maxrss`` (``os.wait4``).  The same runs over the small messages alone give the
process's floor (interpreter, asyncpg, the pool), so ``big - floor`` is what the big
message costs.  Prints the median of ``--runs`` runs of each.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.postgres import PostgresServer, running_postgres

from benchmarks.migrate_rate import upgrade

FIRST = 1_700_000_000


def build(maildir: Path, small: int, big_mib: int) -> None:
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for n in range(small):
        data = b"From: a@example.org\nSubject: message %d\n\nbody line\n" % n
        (maildir / "cur" / f"{FIRST + n}.M{n}P1.mail.example:2,S").write_bytes(data)
    if big_mib:
        n = small
        path = maildir / "cur" / f"{FIRST + n}.M{n}P1.mail.example:2,S"
        with path.open("wb") as out:
            out.write(b"From: a@example.org\nSubject: attachment\n\n")
            block = os.urandom(57 * 1024)
            line = 57  # 76 base64 characters a line (RFC 2045 section 6.8)
            encoded = b"".join(
                base64.b64encode(block[i : i + line]) + b"\n" for i in range(0, len(block), line)
            )
            for _ in range(big_mib * 2**20 // len(encoded)):
                out.write(encoded)


def peak_rss_kib(args: list[str]) -> tuple[int, float]:
    """Run ``mailslot migrate ARGS``; its peak RSS in KiB (Linux's ru_maxrss unit) and its
    wall-clock seconds."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "migrate", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stderr is not None
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"mailslot migrate {' '.join(args)}: exit {process.returncode}: {err!r}")
    return int(usage.ru_maxrss), time.monotonic() - started


def measure(
    pg: PostgresServer, temp: Path, root: Path, runs: int
) -> tuple[tuple[int, float], tuple[int, float]]:
    """Medians of the copy's and the verify's (peak RSS in KiB, seconds) over ``runs`` fresh
    databases."""
    (temp / "users").write_text("alice:{PLAIN}secret\n")
    head = '[[listener]]\naddress = "127.0.0.1"\nport = 1110\ntls = "none"\n'
    old = f'{head}[auth]\npasswd_file = "users"\n[store]\nmaildir = "{root}/{{user}}/Maildir"\n'
    (temp / "old.toml").write_text(old)
    copies, verifies = [], []
    for _ in range(runs):
        dsn = pg.database("memory")
        asyncio.run(upgrade(dsn))
        new = f'{head}[auth]\nbackend = "postgresql"\n[store]\nbackend = "postgresql"\n'
        (temp / "new.toml").write_text(f'{new}dsn = "{dsn}"\n')
        configs = ["--from-config", f"{temp}/old.toml", "--to-config", f"{temp}/new.toml"]
        copies.append(peak_rss_kib(configs))
        verifies.append(peak_rss_kib([*configs, "--verify"]))
    return median(copies), median(verifies)


def median(runs: list[tuple[int, float]]) -> tuple[int, float]:
    return (
        int(statistics.median(rss for rss, _ in runs)),
        statistics.median(seconds for _, seconds in runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    with running_postgres() as pg:
        results = {}
        for label, big in (("floor", 0), ("big", options.big_mib)):
            with tempfile.TemporaryDirectory(prefix="mailslot-migmem-") as temp:
                root = Path(temp) / "mail"
                build(root / "alice" / "Maildir", options.small, big)
                results[label] = measure(pg, Path(temp), root, options.runs)
        print(
            f"{options.small} small messages + one of {options.big_mib} MiB, "
            f"median peak RSS of {options.runs} runs (MiB):"
        )
        for step, index in (("copy", 0), ("verify", 1)):
            (floor_kib, floor_s), (big_kib, big_s) = results["floor"][index], results["big"][index]
            floor, big = floor_kib / 1024, big_kib / 1024
            print(
                f"{step:>7}: {big:7.1f} with the big message, {floor:7.1f} without,"
                f" {big - floor:+7.1f} for it ({big - floor:.1f} / {options.big_mib} MiB ="
                f" {(big - floor) / options.big_mib:.2f}); {big_s:.2f} s, {floor_s:.2f} s without"
            )


if __name__ == "__main__":
    main()
