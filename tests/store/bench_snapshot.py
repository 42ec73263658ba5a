"""Time MaildirStore.open() on a large Maildir (not a test: no timing thresholds in tests).

    PYTHONPATH=src python tests/store/bench_snapshot.py [count]

Builds two Maildirs of ``count`` messages in a temporary directory: names with ``,W=`` as
Dovecot and mailslot write them, and foreign names without it (whose sizes come from
.mailslot-sizes after the first open).  Prints the first and second open() of each.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time

from mailslot.store.maildir import MaildirStore

BODY = b"From: a@example.org\nSubject: hello\n\n" + b"body line\n" * 40


def populate(maildir: str, count: int, *, with_wire: bool) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    wire = len(BODY) + BODY.count(b"\n")
    for n in range(count):
        base = f"{1_600_000_000 + n}.M{n % 1_000_000}P1Q{n}.bench"
        if with_wire:
            base += f",S={len(BODY)},W={wire}"
        with open(os.path.join(maildir, "cur", base + ":2,S"), "wb") as f:
            f.write(BODY)


async def timed_open(store: MaildirStore, user: str) -> tuple[float, float, int]:
    """Wall-clock and CPU seconds (all threads: the scan runs in a worker) of one open()."""
    start, start_cpu = time.perf_counter(), time.process_time()
    maildrop = await store.open(user)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    count = len(maildrop.messages)
    await maildrop.close()
    return elapsed, cpu, count


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        store = MaildirStore(os.path.join(root, "{user}"))
        for user, with_wire in (("dovecot-names", True), ("foreign-names", False)):
            populate(os.path.join(root, user), count, with_wire=with_wire)
            first, first_cpu, listed = await timed_open(store, user)
            second, second_cpu, _ = await timed_open(store, user)
            print(
                f"{user}: {listed} messages, first open {first:.3f} s ({first_cpu:.3f} s CPU),"
                f" second {second:.3f} s ({second_cpu:.3f} s CPU)"
            )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
