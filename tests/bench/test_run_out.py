"""Where ``python -m benchmarks.run`` writes its results when ``--out`` is not given.

The README's table and chart come from ``benchmarks/results/latest.json``: a partial run
(``--only``, fewer servers, ``--quick``, fewer runs, a profile) once replaced that file with
a one-figure run, so only a full run may write it by default.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from benchmarks import run


def test_a_full_run_writes_latest() -> None:
    assert run.parse_args([]).out == run.LATEST
    assert run.parse_args(["--reps", "5"]).out == run.LATEST


@pytest.mark.parametrize(
    "argv",
    [
        ["--only", "bigbox"],
        ["--servers", "mailslot"],
        ["--quick"],
        ["--reps", "1"],
        ["--profile", "/tmp/prof"],
    ],
)
def test_a_partial_run_writes_to_the_temp_dir(argv: list[str]) -> None:
    out = run.parse_args(argv).out
    assert out != run.LATEST
    assert out.parent == Path(tempfile.gettempdir())
    assert out.name.startswith("mailslot-bench-") and out.suffix == ".json"


def test_an_explicit_out_is_kept() -> None:
    args = run.parse_args(["--only", "bigbox", "--out", "benchmarks/results/latest.json"])
    assert args.out == Path("benchmarks/results/latest.json")
