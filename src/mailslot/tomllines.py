"""Line numbers for TOML keys, so configuration errors can point into the file.

:mod:`tomllib` returns plain dicts without positions, so this module scans the text once for
table headers (``[tls]``, ``[[listener]]``) and ``key =`` lines.  It is a best-effort index
for error messages, not a parser: it is right for the usual one-key-per-line layout and returns
the nearest enclosing line (the table header) or ``None`` when it cannot tell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_\-]+|"[^"\n]*"|\'[^\'\n]*\')'
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_ARRAY_HEADER = re.compile(rf"^\s*\[\[\s*(?P<name>{_DOTTED})\s*\]\]\s*(?:#.*)?$")
_TABLE_HEADER = re.compile(rf"^\s*\[\s*(?P<name>{_DOTTED})\s*\]\s*(?:#.*)?$")
_KEY_LINE = re.compile(rf"^\s*(?P<key>{_DOTTED})\s*=")
_PART = re.compile(_BARE_OR_QUOTED)


def _normalise(dotted: str) -> str:
    """``a . "b"`` -> ``a.b``: the same spelling the loader uses for dotted keys."""
    return ".".join(part.strip("\"'") for part in _PART.findall(dotted))


@dataclass(slots=True)
class _Section:
    name: str
    is_array: bool
    header_line: int | None
    keys: dict[str, int] = field(default_factory=dict)


class KeyLines:
    """Index of the table headers and key lines of one TOML document (lines count from 1)."""

    def __init__(self, text: str) -> None:
        root = _Section("", False, None)
        self._sections: list[_Section] = [root]
        current = root
        in_multiline: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_multiline is not None:
                # Inside a multi-line string nothing is a header or a key.
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if match := _ARRAY_HEADER.match(line):
                current = _Section(_normalise(match["name"]), True, number)
                self._sections.append(current)
                continue
            if match := _TABLE_HEADER.match(line):
                current = _Section(_normalise(match["name"]), False, number)
                self._sections.append(current)
                continue
            if match := _KEY_LINE.match(line):
                current.keys.setdefault(_normalise(match["key"]), number)
                rest = line[match.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote
                        break

    def find(
        self, table: str | None, key: str | None = None, index: int | None = None
    ) -> int | None:
        """Return the line of ``key`` in ``table`` (the ``index``-th one if it is an array).

        Falls back to the table's header line, then to a dotted or inline form in the root
        table (``tls.certificate = ...``, ``listener = [...]``), then ``None``.
        """
        root = self._sections[0]
        if table is None:
            if key is None:
                return None
            if key in root.keys:
                return root.keys[key]
            # An unknown or misplaced table: point at its first header.
            return next((s.header_line for s in self._sections if s.name == key), None)
        matching = [
            s for s in self._sections if s.name == table and s.is_array == (index is not None)
        ]
        if index is not None:
            section = matching[index] if index < len(matching) else None
        else:
            section = matching[0] if matching else None
        if section is not None:
            if key is not None and key in section.keys:
                return section.keys[key]
            return section.header_line
        if key is not None and f"{table}.{key}" in root.keys:
            return root.keys[f"{table}.{key}"]
        return root.keys.get(table)
