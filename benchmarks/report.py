"""Figures, their medians, the mailslot/peer table, the JSON file and the chart."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Better = Literal["higher", "lower"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no samples (never a made-up zero)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Figure:
    name: str
    unit: str
    better: Better
    runs: dict[str, list[float]] = field(default_factory=dict)

    def median(self, server: str) -> float:
        values = self.runs.get(server, [])
        return statistics.median(values) if values else float("nan")


class Report:
    def __init__(self, servers: list[str]) -> None:
        self.servers = servers
        self.figures: dict[str, Figure] = {}
        self.errors: list[str] = []
        self.notes: list[str] = []

    def add(self, name: str, unit: str, better: Better, server: str, value: float) -> None:
        fig = self.figures.setdefault(name, Figure(name, unit, better))
        fig.runs.setdefault(server, []).append(value)

    def table(self, subject: str = "mailslot") -> str:
        peers = [s for s in self.servers if s != subject]
        head = ["figure", "unit", *self.servers, *(f"{subject}/{p}" for p in peers)]
        rows = [head]
        for fig in self.figures.values():
            row = [fig.name, fig.unit + (" ↑" if fig.better == "higher" else " ↓")]
            row += [_fmt(fig.median(s)) for s in self.servers]
            for peer in peers:
                a, b = fig.median(subject), fig.median(peer)
                row.append(f"{a / b:.2f}" if b and a == a and b == b else "-")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [
            "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in rows
        ]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)

    def to_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {
            **meta,
            "ok": not self.errors,
            "servers": self.servers,
            "errors": self.errors,
            "notes": self.notes,
            "figures": {
                f.name: {
                    "unit": f.unit,
                    "better": f.better,
                    "runs": f.runs,
                    "median": {s: _num(f.median(s)) for s in self.servers},
                }
                for f in self.figures.values()
            },
        }

    def write(self, path: Path, meta: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(meta), indent=2, allow_nan=False) + "\n")

    def chart(self, path: Path) -> None:
        """One small panel per figure, the servers' medians side by side."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figs = list(self.figures.values())
        if not figs:
            return
        cols = 4
        rows = (len(figs) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
        colors = ["#2a7ab9", "#d9822b", "#c9a227", "#8f5bb0", "#3a9d5d"]
        for ax, f in zip(axes.flat, figs, strict=False):
            values = [f.median(s) for s in self.servers]
            ax.bar(range(len(values)), [0 if v != v else v for v in values], color=colors)
            ax.set_xticks(range(len(values)), self.servers, fontsize=7, rotation=20)
            arrow = "higher is better" if f.better == "higher" else "lower is better"
            ax.set_title(f"{f.name}\n{f.unit}, {arrow}", fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
        for ax in list(axes.flat)[len(figs) :]:
            ax.axis("off")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)


def _fmt(value: float) -> str:
    if value != value:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _num(value: float) -> float | None:
    return None if value != value else value
