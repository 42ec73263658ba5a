"""benchmarks.pooled: several runs' reps taken together, a run that failed left out, and the
rate ratio taken rep by rep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks import pooled


def _run(path: Path, ok: bool, mine: list[float], peer: list[float]) -> Path:
    doc = {
        "ok": ok,
        "figures": {
            "session plain rate": {"runs": {"mailslot": mine, "mailslot-pg": peer}},
        },
    }
    path.write_text(json.dumps(doc))
    return path


def test_reps_of_clean_runs_are_pooled_and_ratios_taken_per_rep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _run(tmp_path / "a.json", True, [100.0, 200.0, 300.0], [50.0, 50.0, 60.0])
    second = _run(tmp_path / "b.json", True, [400.0], [100.0])
    void = _run(tmp_path / "c.json", False, [1.0], [1000.0])
    figures = pooled.pooled([first, second, void])
    assert figures["session plain rate"]["mailslot"] == [100.0, 200.0, 300.0, 400.0]
    assert pooled.main([str(first), str(second), str(void)]) == 0
    out = capsys.readouterr().out
    # Ratios 0.5, 0.25, 0.2, 0.25: their median, not the ratio of the medians (0.22).
    assert "mailslot-pg / mailslot, per rep: 0.25" in out
