"""What every harness in this folder shares: the input reader, chunkings, replay and main().

A harness is a module with one property function, ``check(data: bytes) -> None``, that raises
(``AssertionError`` for a broken property, anything else for an escaped exception) on a bad
input.  Run as a script it hands ``check`` to atheris (libFuzzer flags on the command line);
imported, ``check`` replays the committed corpus under plain pytest, without atheris
(tests/fuzz/test_fuzz_corpus.py).  Nothing here imports atheris at module level.
"""

from __future__ import annotations

import gc
import random
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"


class Reader:
    """Consumes a fuzz input front to back; past its end every read gives zeros or b"".

    A pure-Python stand-in for atheris.FuzzedDataProvider, so that replaying a corpus file
    under pytest reads it exactly as the fuzzer did.
    """

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    @property
    def left(self) -> int:
        return len(self._data) - self._position

    def byte(self) -> int:
        if self._position >= len(self._data):
            return 0
        value = self._data[self._position]
        self._position += 1
        return value

    def uint(self, octets: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(octets)), "big")

    def take(self, count: int) -> bytes:
        chunk = self._data[self._position : self._position + count]
        self._position += len(chunk)
        return chunk

    def rest(self) -> bytes:
        return self.take(self.left)


def split_at_random(data: bytes, seed: int, max_chunk: int = 16) -> list[bytes]:
    """``data`` cut into pieces of 1..max_chunk octets, chosen by ``seed`` (deterministic)."""
    rng = random.Random(seed)
    pieces = []
    position = 0
    while position < len(data):
        size = rng.randint(1, max_chunk)
        pieces.append(data[position : position + size])
        position += size
    return pieces


def chunkings(data: bytes, seed: int) -> Iterator[list[bytes]]:
    """The chunkings every "independent of chunking" property compares: whole, seeded pieces
    of 1-16 octets, and one octet at a time (pieces of 1-3 octets past 128 octets, where
    octet-sized pieces would only make the fuzzer slower, not the check stronger)."""
    yield [data] if data else []
    yield split_at_random(data, seed)
    if len(data) <= 128:
        yield [data[i : i + 1] for i in range(len(data))]
    else:
        yield split_at_random(data, seed + 1, 3)


def corpus_files(target: str) -> list[Path]:
    """The committed seed corpus of ``target``, sorted (empty if the folder is missing)."""
    folder = CORPUS_DIR / target
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _instrument_mailslot(atheris: types.ModuleType) -> int:
    """Add coverage instrumentation to every loaded function of the mailslot package.

    atheris.instrument_imports() only sees modules imported inside it, and the harness imported
    mailslot at module level (so that ``check`` stays importable without atheris);
    instrument_all() would instrument the whole standard library too, for no gain.
    """
    count = 0
    for obj in gc.get_objects():
        if (
            isinstance(obj, types.FunctionType)
            and isinstance(getattr(obj, "__module__", None), str)
            and obj.__module__.startswith("mailslot")
        ):
            atheris.instrument_func(obj)
            count += 1
    return count


def main(check: Callable[[bytes], None]) -> None:
    """Run ``check`` under atheris with the command line's libFuzzer flags."""
    import atheris  # only the fuzzing run needs it; replaying the corpus does not

    count = _instrument_mailslot(atheris)
    sys.stderr.write(f"INFO: instrumented {count} mailslot functions\n")
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
