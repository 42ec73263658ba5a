"""``python -m benchmarks.migrate_rate``: how fast ``mailslot migrate`` moves a big maildrop.

Starts a private PostgreSQL (tests/support/postgres.py), builds one Maildir of ``--messages``
messages (Dovecot-style names with ``,S=``/``,W=``, served with ``[store] uidl_format`` and a
``dovecot-uidlist`` unless ``--no-uidlist``), and runs the real command, ``python -m mailslot
migrate``, as a subprocess: the copy, a re-run (everything already there: the cost of a
resumed run), and ``--verify`` (every message read and hashed on both sides).  Then it checks
that the LIST and UIDL a login gets from PostgreSQL (``PostgresStore.open``) are the Maildir
store's, entry for entry.  Prints seconds, messages/s and MiB/s for each step.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from tests.support.postgres import running_postgres

from mailslot.store.maildir import MaildirStore
from mailslot.store.postgresql import PostgresStore, schema

FIRST = 1_700_000_000


def build(maildir: Path, count: int, uidlist: bool) -> int:
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    octets = 0
    records = []
    for n in range(count):
        data = b"From: a@example.org\nSubject: message %d\n\n%s\n" % (n, b"body line\n" * (n % 40))
        wire = len(data) + data.count(b"\n")
        base = f"{FIRST + n}.M{n}P{n % 65536}.mail.example,S={len(data)},W={wire}"
        (maildir / "cur" / f"{base}:2,S").write_bytes(data)
        records.append(f"{n + 1} :{base}\n")
        octets += wire
    if uidlist:
        (maildir / "dovecot-uidlist").write_text(f"3 V1700001234 N{count + 1}\n" + "".join(records))
    return octets


def timed(args: list[str]) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mailslot", "migrate", *args, "--progress-interval", "5"],
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"mailslot migrate {' '.join(args)}: exit status {result.returncode}")
    return elapsed


async def same_listing(root: Path, dsn: str, uidl_format: str | None) -> tuple[int, float]:
    maildirs = MaildirStore(f"{root}/{{user}}/Maildir", uidl_format=uidl_format)
    database = PostgresStore(dsn, node="bench")
    old = await maildirs.open("alice")
    started = time.monotonic()
    new = await database.open("alice")
    login = time.monotonic() - started
    try:
        left = [(m.uid, m.size) for m in old.messages]
        right = [(m.uid, m.size) for m in new.messages]
        if left != right:
            raise SystemExit("LIST/UIDL differ between the Maildir and PostgreSQL")
        return len(left), login
    finally:
        await new.close()
        await old.close()
        await database.aclose()


async def upgrade(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await schema.upgrade(connection)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--no-uidlist", action="store_true")
    options = parser.parse_args()
    uidl_format = None if options.no_uidlist else "%08Xu%08Xv"
    with tempfile.TemporaryDirectory(prefix="mailslot-migrate-") as temp, running_postgres() as pg:
        root = Path(temp) / "mail"
        octets = build(root / "alice" / "Maildir", options.messages, not options.no_uidlist)
        dsn = pg.database("migrate")
        asyncio.run(upgrade(dsn))
        (Path(temp) / "users").write_text("alice:{PLAIN}secret\n")
        # What load() demands of every configuration; migrate binds and reads none of it.
        head = '[[listener]]\naddress = "127.0.0.1"\nport = 1110\ntls = "none"\n'
        store = f'maildir = "{root}/{{user}}/Maildir"\n'
        if uidl_format:
            store += f'uidl_format = "{uidl_format}"\n'
        old = f'{head}[auth]\npasswd_file = "users"\n[store]\n{store}'
        new = f'{head}[auth]\nbackend = "postgresql"\n[store]\nbackend = "postgresql"\n'
        (Path(temp) / "old.toml").write_text(old)
        (Path(temp) / "new.toml").write_text(f'{new}dsn = "{dsn}"\n')
        configs = ["--from-config", f"{temp}/old.toml", "--to-config", f"{temp}/new.toml"]
        mib = octets / 2**20
        print(f"{options.messages:,} messages, {mib:.1f} MiB (wire), uidl_format={uidl_format}")
        for label, extra in (
            ("copy", ["--batch", str(options.batch)]),
            ("re-run", []),
            ("verify", ["--verify"]),
        ):
            seconds = timed([*configs, *extra])
            print(
                f"{label:>7}: {seconds:6.1f} s  {options.messages / seconds:8,.0f} msg/s"
                f"  {mib / seconds:6.1f} MiB/s"
            )
        count, login = asyncio.run(same_listing(root, dsn, uidl_format))
        print(f"LIST/UIDL identical for {count:,} messages; first PostgreSQL login {login:.3f} s")


if __name__ == "__main__":
    main()
