"""``python -m benchmarks.pooled A.json B.json ...``: figures of several runs of the runner
taken together: each figure's median over every rep of every run, and for each rate its
ratio to a reference server's taken rep by rep (both servers measured seconds apart in the
same rep), then the median of those ratios.  For before/after comparisons on a shared
machine, where a single run's three reps are too few (docs/benchmarks.md, PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def pooled(paths: list[Path]) -> dict[str, dict[str, list[float]]]:
    """Figure -> server -> every rep's value, over the runs that exited clean (``ok``)."""
    out: dict[str, dict[str, list[float]]] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        if not doc.get("ok", False):
            continue
        for name, figure in doc["figures"].items():
            for server, runs in figure["runs"].items():
                out.setdefault(name, {}).setdefault(server, []).extend(runs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pooled")
    parser.add_argument("runs", nargs="+", type=Path, help="JSON files of benchmarks.run")
    parser.add_argument("--reference", default="mailslot", help="the ratios' denominator")
    args = parser.parse_args(argv)
    figures = pooled(args.runs)
    for name in sorted(figures):
        by_server = figures[name]
        cells = [f"{s} {statistics.median(v):.4g} ({len(v)})" for s, v in by_server.items()]
        print(f"{name}: " + ", ".join(cells))
        reference = by_server.get(args.reference)
        if reference is None or not name.endswith("rate"):
            continue
        for server, values in by_server.items():
            if server != args.reference and len(values) == len(reference):
                ratios = [v / r for v, r in zip(values, reference, strict=True) if r]
                print(f"  {server} / {args.reference}, per rep: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
