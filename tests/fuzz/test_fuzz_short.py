"""The short fuzzing run: each harness under atheris for a few thousand inputs (docs/fuzzing.md).

Each harness runs as a subprocess, ``python fuzz/fuzz_<target>.py NEW fuzz/corpus/<target>
-runs=N``, starting from the committed corpus (new inputs go to a temporary folder, so the
committed one is never written).  An escaped exception or a broken property makes libFuzzer
write a crash file and exit non-zero: the test fails with the traceback.  Without atheris the
test is skipped, except under ``CI=true``, where a missing fuzzer fails it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.programs import in_ci

from .conftest import FUZZ_DIR, TARGETS

RUNS = 2000


@pytest.fixture(scope="module")
def atheris_available() -> None:
    if importlib.util.find_spec("atheris") is None:
        message = "atheris is not installed (pip install -e '.[fuzz]')"
        if in_ci():
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)


@pytest.mark.parametrize("target", TARGETS)
def test_short_fuzzing_run_finds_nothing(
    target: str, tmp_path: Path, atheris_available: None
) -> None:
    env = dict(os.environ)
    src = str(FUZZ_DIR.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    new = tmp_path / "new"
    new.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(FUZZ_DIR / f"fuzz_{target}.py"),
            str(new),
            str(FUZZ_DIR / "corpus" / target),
            f"-runs={RUNS}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert result.returncode == 0 and not crashes, result.stderr[-6000:]
    assert f"Done {RUNS} runs" in result.stderr, result.stderr[-2000:]
