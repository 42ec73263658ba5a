"""The harnesses live in fuzz/ at the repository's root and import each other as top-level
modules (``_harness``, ``fuzz_dotstuff``), as they do when run as scripts."""

from __future__ import annotations

import sys
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
if str(FUZZ_DIR) not in sys.path:
    sys.path.insert(0, str(FUZZ_DIR))

TARGETS = ("commands", "connection", "dotstuff", "maildirnames", "proxy", "sasl")
