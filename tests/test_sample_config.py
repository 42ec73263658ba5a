"""The sample configuration shipped in the package (``mailslot sample-config``).

It must name every setting of every table with its default, so it cannot fall behind
config.py: the tables and keys are read from config.py's dataclasses, not listed here.  And it
must be usable: with its paths pointed at real files, ``mailslot check-config`` accepts it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tomllib
import typing
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path, PurePath
from typing import Any

import pytest
from tests.support.dropped import shared_directory
from tests.support.production import localise

from mailslot import config
from mailslot.cli import main, sample_config

SAMPLE = Path(config.__file__).parent / "data" / "mailslot.toml"
HEADER = re.compile(r"^(?:#\s*)?\[\[?\s*([\w.-]+)\s*\]\]?\s*$")
KEY = re.compile(r"^(#\s*)?([A-Za-z_][\w-]*)\s*=\s*(.*)$")


def tables() -> Iterator[tuple[str, type[Any]]]:
    """Every table of the file format and its dataclass: ``[[listener]]``, config.py's tables,
    and the tables nested in them (a field whose type is a dataclass, or a tuple of them)."""
    todo: list[tuple[str, type[Any]]] = [
        ("listener", config.ListenerConfig),
        *config._TABLES.items(),
    ]
    while todo:
        name, cls = todo.pop(0)
        yield name, cls
        for key, inner in _nested(cls).items():
            todo.append((f"{name}.{key}", inner))


def _nested(cls: type[Any]) -> dict[str, type[Any]]:
    nested = {}
    for key, hint in typing.get_type_hints(cls).items():
        # A table (T, or T | None), or an array of tables (tuple[T, ...]).
        for inner in (hint, *typing.get_args(hint)):
            if isinstance(inner, type) and dataclasses.is_dataclass(inner):
                nested[key] = inner
    return nested


def settings(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.name not in _nested(cls)]


def default_text(field: dataclasses.Field[Any]) -> str:
    """How the sample states a setting's default: ``Default: VALUE`` as TOML, or Required."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "Required"
    if value is None:
        return "Default: none"
    if isinstance(value, bool):
        return f"Default: {'true' if value else 'false'}"
    if isinstance(value, float) and value.is_integer():
        return f"Default: {int(value)}"
    if isinstance(value, int | float):
        return f"Default: {value}"
    if isinstance(value, tuple | list):
        return f"Default: {json.dumps(list(value))}"
    return f"Default: {json.dumps(str(value))}"


def documented(text: str) -> dict[tuple[str, str], list[tuple[str, bool, str]]]:
    """(table, key) -> each line that sets it: the comment block just above it, whether the
    line is commented out, and its value."""
    found: dict[tuple[str, str], list[tuple[str, bool, str]]] = {}
    table = ""
    block: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if header := HEADER.match(line):
            table, block = header[1], []
        elif key := KEY.match(line):
            entry = (" ".join(block), key[1] is not None, key[3])
            found.setdefault((table, key[2]), []).append(entry)
            block = []
        elif line.startswith("#"):
            block.append(line.lstrip("#").strip())
        else:
            block = []
    return found


def test_sample_config_prints_the_file_shipped_in_the_package(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["sample-config"]) == 0
    printed = capsys.readouterr().out
    assert printed == SAMPLE.read_text(encoding="utf-8") == sample_config()
    # The checkout's pyproject.toml (the package may be installed elsewhere, as in CI).
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "data/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["mailslot"]


def test_every_table_and_setting_of_config_py_is_in_the_sample_with_its_default() -> None:
    found = documented(SAMPLE.read_text(encoding="utf-8"))
    missing, wrong = [], []
    for table, cls in tables():
        for field in settings(cls):
            entries = found.get((table, field.name))
            if not entries:
                missing.append(f"[{table}] {field.name}")
            elif not any(default_text(field) in comment for comment, _, _ in entries):
                wrong.append(f"[{table}] {field.name}: no {default_text(field)!r} above it")
    assert not missing, f"the sample lacks {missing}"
    assert not wrong, wrong


def test_a_commented_out_setting_shows_its_default_value() -> None:
    """Uncommenting a line whose default is a value changes nothing (the ones whose default
    is none show an example instead)."""
    classes = dict(tables())
    for (table, key), entries in documented(SAMPLE.read_text(encoding="utf-8")).items():
        for _, commented, value in entries:
            field = {f.name: f for f in settings(classes[table])}[key]
            if not commented or field.default is None or field.default is dataclasses.MISSING:
                continue
            parsed = tomllib.loads(f"v = {value}")["v"]
            expected = field.default
            if isinstance(expected, PurePath):  # a path is written as a string
                expected = str(expected)
            assert parsed == (list(expected) if isinstance(expected, tuple) else expected), (
                f"[{table}] {key}"
            )


def test_the_sample_as_shipped_is_valid_but_for_its_files() -> None:
    loaded = config.loads(sample_config(), SAMPLE, check_files=False)
    assert [(lst.protocol, lst.address, lst.port, lst.tls) for lst in loaded.listeners] == [
        ("pop3", "0.0.0.0", 995, "implicit"),
        ("pop3", "::", 995, "implicit"),
        ("pop3", "0.0.0.0", 110, "starttls"),
        ("pop3", "::", 110, "starttls"),
        ("lmtp", "127.0.0.1", 110, "none"),
    ]
    assert loaded.listeners[-1].path == Path("/var/spool/postfix/private/mailslot-lmtp")
    assert loaded.auth.passwd_file == Path("/etc/mailslot/users")
    assert loaded.server.user == "mailslot"
    assert loaded.metrics.port is None
    assert not loaded.auth.allow_plaintext_without_tls


def test_the_sample_passes_check_config_with_its_paths_pointed_at_real_files(
    tmp_path: Path,
) -> None:
    with shared_directory() if os.geteuid() == 0 else nullcontext(tmp_path) as directory:
        here = localise(directory)
        here.config_path.write_text(here.apply(sample_config()), encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "mailslot", "check-config", "--config", str(here.config_path)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK: {here.config_path}: 5 listeners: "), result.stdout
    assert "pop3 on [::]:995 (tls implicit)" in result.stdout
    assert "lmtp on " in result.stdout
    # Only the warnings a test certificate earns (its names are not mail.example.org).
    for line in result.stderr.splitlines():
        assert ": warning: " in line, result.stderr
