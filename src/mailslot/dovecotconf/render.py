"""The imported settings as a commented mailslot.toml (docs/configuration.md).

The file opens with what was read and, as comments, every setting not carried over with its
reason and every mapping that is close but not identical, so the administrator reads them
where the settings are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from mailslot.dovecotconf.mapping import Imported

# Tables in the order docs/configuration.md describes them.
_ORDER = ("server", "tls", "auth", "auth.sql", "auth.dovecot", "store", "limits", "log")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _table(header: str, values: dict[str, Any]) -> list[str]:
    return [header, *(f"{key} = {_value(value)}" for key, value in values.items()), ""]


def _comment(lines: Iterable[str]) -> list[str]:
    return [f"#   {line}" for line in lines]


def render(imported: Imported, source: str) -> str:
    """The TOML text; ``source`` says what was read (shown in the header)."""
    out = [f"# mailslot.toml written by 'mailslot import-dovecot' from {source}.", "#"]
    if imported.skipped:
        out.append("# Not carried over:")
        out += _comment(item.format() for item in imported.skipped)
    else:
        out.append("# Every setting was carried over.")
    if imported.notes:
        out += ["#", "# Carried over, with a difference:"]
        out += _comment(imported.notes)
    out.append("")
    for listener in imported.listeners:
        out += _table("[[listener]]", listener)
    names = [name for name in _ORDER if name in imported.tables]
    names += [name for name in imported.tables if name not in _ORDER]
    for name in names:
        out += _table(f"[{name}]", imported.tables[name])
        if name == "tls":
            for entry in imported.certificates:
                out += _table("[[tls.certificates]]", entry)
    if imported.certificates and "tls" not in imported.tables:
        for entry in imported.certificates:
            out += _table("[[tls.certificates]]", entry)
    return "\n".join(out).rstrip("\n") + "\n"
