"""dovecot.conf syntax (Dovecot 2.3, doc/example-config and ``doveconf -n`` output) into a tree.

The grammar, as Dovecot's ``config-parser.c`` reads it:

- ``key = value``: the value runs to the end of the line; a ``#`` outside quotes starts a
  comment; a value in double quotes may hold ``#`` and ``\\"``; a line ending in ``\\``
  continues on the next one.
- ``$name`` in an unquoted value is the value ``name`` had so far (``protocols = $protocols
  pop3``), ``$ENV:NAME`` an environment variable; a setting extending itself before it was set is
  empty (Debian's protocols.d files start from ``$protocols``); other ``$`` text is kept.
- ``key = <path``: the value is the file's contents; the path is kept, since for
  ``ssl_cert`` and ``ssl_key`` the path is what is carried over (:meth:`Setting.file`).
- ``type [name] {`` ... ``}``: a section (``protocol pop3``, ``service pop3-login``,
  ``inet_listener pop3s``, ``passdb``, ``local 192.0.2.1``); a ``key {`` block without a
  name (``plugin {``) is a section too.
- ``!include PATH`` (a glob, relative to the including file's directory) and
  ``!include_try PATH`` (the same, silent when nothing matches).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

_SECTION = re.compile(r"^([A-Za-z0-9_.-]+)(?:\s+(\"[^\"]*\"|[^\s{]+))?\s*\{$")
_SETTING = re.compile(r"^([A-Za-z0-9_./-]+)\s*=\s*(.*)$")
_VARIABLE = re.compile(r"\$(ENV:[A-Za-z0-9_]+|[A-Za-z_][A-Za-z0-9_]*)")
_REPEATED = frozenset({"passdb", "userdb"})
_INCLUDE = re.compile(r"^!(include|include_try)\s+(.+)$")


class DovecotConfigError(Exception):
    """The configuration cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One ``key = value`` as written; ``where`` is ``FILE:LINE``."""

    key: str
    value: str
    where: str

    def file(self) -> Path | None:
        """The path of a ``<file`` value, else ``None``."""
        if self.value.startswith("<"):
            return Path(self.value[1:].strip())
        return None

    def text(self) -> str:
        """The value as Dovecot uses it: a ``<file`` value is that file's contents."""
        path = self.file()
        if path is None:
            return self.value
        try:
            return path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise DovecotConfigError(
                f"{self.where}: {self.key}: cannot read {path}: {exc}"
            ) from exc


@dataclass(slots=True)
class Section:
    """A block: its type (``""`` for the top level), its name, settings and subsections.

    A key set twice keeps its last value, as in Dovecot.
    """

    kind: str = ""
    name: str = ""
    where: str = ""
    settings: dict[str, Setting] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        setting = self.settings.get(key)
        return None if setting is None else setting.value

    def find(self, kind: str, name: str | None = None) -> Iterator[Section]:
        for section in self.sections:
            if section.kind == kind and (name is None or section.name == name):
                yield section

    @property
    def title(self) -> str:
        return f"{self.kind} {self.name}".strip()


def _strip_comment(line: str) -> str:
    quoted = False
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


class _Parser:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.root = Section(where="")
        self.stack: list[Section] = [self.root]
        self.depth = 0  # include nesting, against include loops

    def expand(self, key: str, value: str) -> str:
        def variable(match: re.Match[str]) -> str:
            name = match[1]
            if name.startswith("ENV:"):
                return self.environ.get(name[4:], "")
            for section in reversed(self.stack):
                if name in section.settings:
                    return section.settings[name].value
            # A setting extending itself from its default ("protocols = $protocols pop3" in
            # Debian's protocols.d) starts from empty; any other "$" text is kept.
            return "" if name == key else match[0]

        return _VARIABLE.sub(variable, value)

    def read_file(self, path: Path, *, optional: bool = False) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            if optional:
                return
            raise DovecotConfigError(f"cannot read {path}: {exc}") from exc
        self.read_text(text, str(path), path.parent)

    def read_text(self, text: str, name: str, base: Path) -> None:
        lines = text.splitlines()
        index = 0
        while index < len(lines):
            number = index + 1
            line = lines[index]
            index += 1
            while line.rstrip().endswith("\\") and index < len(lines):
                line = line.rstrip()[:-1].rstrip() + " " + lines[index].strip()
                index += 1
            self.line(_strip_comment(line).strip(), f"{name}:{number}", base)

    def line(self, line: str, where: str, base: Path) -> None:
        if not line:
            return
        if match := _INCLUDE.match(line):
            self.include(match[1] == "include_try", _unquote(match[2].strip()), where, base)
        elif line == "}":
            if len(self.stack) == 1:
                raise DovecotConfigError(f"{where}: '}}' without an open section")
            self.stack.pop()
        elif match := _SETTING.match(line):
            raw = match[2].strip()
            # Quoted values are taken literally; unquoted ones have $variables expanded.
            value = _unquote(raw) if raw.startswith('"') else self.expand(match[1], raw)
            self.stack[-1].settings[match[1]] = Setting(match[1], value, where)
        elif match := _SECTION.match(line):
            kind, name = match[1], _unquote(match[2] or "")
            parent = self.stack[-1]
            # A section opened again adds to the first (conf.d files each add to
            # "service pop3-login"); every passdb and userdb block is one more database.
            same = None if kind in _REPEATED else next(parent.find(kind, name), None)
            if same is None:
                same = Section(kind, name, where)
                parent.sections.append(same)
            self.stack.append(same)
        else:
            raise DovecotConfigError(f"{where}: cannot parse {line!r}")

    def include(self, optional: bool, pattern: str, where: str, base: Path) -> None:
        if self.depth > 20:
            raise DovecotConfigError(f"{where}: includes nested too deep (a loop?)")
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        matches = sorted(glob.glob(full))
        if not matches and not optional and not glob.has_magic(full):
            raise DovecotConfigError(f"{where}: !include {pattern}: no such file")
        self.depth += 1
        try:
            for match in matches:
                self.read_file(Path(match), optional=optional)
        finally:
            self.depth -= 1

    def finish(self, name: str) -> Section:
        if len(self.stack) > 1:
            raise DovecotConfigError(
                f"{name}: section {self.stack[-1].title!r} ({self.stack[-1].where}) is not closed"
            )
        return self.root


def parse_file(path: Path, environ: Mapping[str, str] | None = None) -> Section:
    """Parse ``path`` and everything it includes; raise :class:`DovecotConfigError`."""
    parser = _Parser(os.environ if environ is None else environ)
    parser.read_file(path)
    return parser.finish(str(path))


def parse_text(
    text: str,
    name: str = "<dovecot.conf>",
    base: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Section:
    """Parse ``text`` (e.g. ``doveconf -n`` output); includes are relative to ``base``."""
    parser = _Parser(os.environ if environ is None else environ)
    parser.read_text(text, name, base or Path.cwd())
    return parser.finish(name)
