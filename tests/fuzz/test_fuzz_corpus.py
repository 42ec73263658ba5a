"""Replay every committed fuzzing input through its harness's property function, no atheris.

Each file under fuzz/corpus/<target>/ is an input the long fuzzing run kept (docs/fuzzing.md);
the harness's ``check`` asserts its properties (chunking independence, round trips, caps,
unique-ids, only documented exceptions).  This runs on every test run, so a change that breaks
a property on an input the fuzzer once found fails here without a fuzzer.
"""

from __future__ import annotations

import importlib

import pytest

from .conftest import FUZZ_DIR, TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_has_a_harness_and_a_corpus(target: str) -> None:
    assert (FUZZ_DIR / f"fuzz_{target}.py").is_file()
    assert len(list((FUZZ_DIR / "corpus" / target).iterdir())) >= 3


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_replays_clean(target: str) -> None:
    check = importlib.import_module(f"fuzz_{target}").check
    paths = sorted((FUZZ_DIR / "corpus" / target).iterdir())
    for path in paths:
        try:
            check(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{path.relative_to(FUZZ_DIR.parent)} fails: {exc!r}") from exc
