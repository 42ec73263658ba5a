"""The core is sans-IO: it imports only the standard library and itself (STYLE.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import mailslot.protocol

CORE = Path(mailslot.protocol.__file__).parent
MODULES = sorted(CORE.glob("*.py"))
FORBIDDEN = {"asyncio", "ssl", "socket", "logging", "time", "selectors", "threading"}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_core_imports_only_stdlib_and_itself(path: Path) -> None:
    for name in imported(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, name
        if top == "mailslot":
            assert name.startswith("mailslot.protocol"), name
        else:
            assert top in sys.stdlib_module_names or top == "__future__", name
