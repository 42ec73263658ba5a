"""``python -m benchmarks.dovecot_uidlist``: what ``[store] uidl_format`` costs a login.

Builds one maildrop of ``--messages`` messages (Dovecot-style names with ``,S=`` and
``,W=``) and times, in this process, a login's snapshot (``MaildirStore.open`` + close) and
building the UIDL and LIST answers from it, with and without a uidl_format:

* ``cold``: a new store each time (no snapshot or uidlist cached: a worker's first login);
* ``listed``: one store, cur/ listed again at each login (its times are under a second old);
* ``settled``: one store, cur/ and the uidlist unchanged and old enough to be trusted.

The median of ``--reps`` runs is printed, in milliseconds.  ``--hot`` times instead the
open and close of a small (20-message) settled maildrop, the path of every plain login.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from mailslot.store import maildir
from mailslot.store.maildir import MaildirStore


def _build(root: Path, count: int) -> None:
    box = root / "alice" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = (
            f"{1_600_000_000 + i}.M{i % 1_000_000}P{i % 30000}.mail.example.org,S=2000,W=2040:2,S"
        )
        (box / "cur" / name).write_bytes(b"")


async def _login(store: MaildirStore) -> int:
    maildrop = await store.open("alice")
    try:
        messages = maildrop.messages
        uidl = "".join(f"{n} {m.uid}\r\n" for n, m in enumerate(messages, 1))
        listing = "".join(f"{n} {m.size}\r\n" for n, m in enumerate(messages, 1))
        return len(uidl) + len(listing)
    finally:
        await maildrop.close()


def _round(
    stores: dict[str | None, MaildirStore],
    template: str | None,
    samples: dict[str, list[float]],
) -> None:
    """One login per format, one after the other, so that load on the machine hits all."""
    for fmt, store in stores.items():
        if template is not None:  # cold: a new store, nothing cached
            store = MaildirStore(template, uidl_format=fmt)
        start = time.perf_counter()
        asyncio.run(_login(store))
        samples[str(fmt)].append((time.perf_counter() - start) * 1000)


async def _opens(store: MaildirStore, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        maildrop = await store.open("alice")
        await maildrop.close()
    return (time.perf_counter() - start) / count * 1e6


async def _hot(reps: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        _build(root, 20)
        template = str(root / "{user}" / "Maildir")
        stores = {fmt: MaildirStore(template, uidl_format=fmt) for fmt in (None, "%08Xu%08Xv")}
        for store in stores.values():
            await _opens(store, 10)
        await asyncio.sleep(1.2)  # settled: the cached snapshot is reused
        samples: dict[str | None, list[float]] = {fmt: [] for fmt in stores}
        for _ in range(reps):
            for fmt, store in stores.items():
                samples[fmt].append(await _opens(store, 2000))
        for fmt, values in samples.items():
            print(
                f"uidl_format={fmt!s:12} small maildrop open+close: "
                f"median {statistics.median(values):.1f} us (min {min(values):.1f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--hot", action="store_true")
    args = parser.parse_args()
    if args.hot:
        asyncio.run(_hot(args.reps))
        return
    formats: list[str | None] = [None, "%08Xu%08Xv", "%f"]
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        _build(root, args.messages)
        template = str(root / "{user}" / "Maildir")
        stores = {fmt: MaildirStore(template, uidl_format=fmt) for fmt in formats}
        for store in stores.values():
            asyncio.run(_login(store))  # the uidlist is written once, outside the timing
        cur = os.stat(root / "alice" / "Maildir" / "cur")
        young = max(cur.st_mtime_ns, cur.st_ctime_ns)
        settled = time.time_ns() + 10 * maildir.SETTLED_NS
        real_now = maildir._now
        results: dict[str, dict[str, list[float]]] = {}
        clocks = (("cold", real_now), ("listed", lambda: young), ("settled", lambda: settled))
        for mode, now in clocks:
            samples: dict[str, list[float]] = {str(fmt): [] for fmt in formats}
            maildir._now = now
            try:
                for _ in range(args.reps):
                    _round(stores, template if mode == "cold" else None, samples)
            finally:
                maildir._now = real_now
            results[mode] = samples
        for fmt in formats:
            shown = " ".join(
                f"{mode}={statistics.median(samples[str(fmt)]):.1f}ms"
                f"(min {min(samples[str(fmt)]):.1f})"
                for mode, samples in results.items()
            )
            print(f"uidl_format={fmt!s:12} messages={args.messages} {shown}", flush=True)


if __name__ == "__main__":
    main()
