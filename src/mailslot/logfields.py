"""The event name and fields of a log message, and its two renderings (``[log] format``).

A message is a %-format as :mod:`logging` takes it; a conversion right after ``key=``
(``"login failed: user=%s mechanism=%s"``) is the field ``key``, and the words before the
first ``": "`` or ``", "`` that are not fields name the event (``login_failed``).  So every existing
call gives sensible fields without naming them twice, and both formats carry the same ones:

- ``text``: the message as before, each field's value with its control characters escaped
  and quoted when it holds a space or a quote (``reason="idle timeout"``), then the fields
  of the session and process not in the message (``user=alice worker=0``);
- ``json``: one object per line: ``time``, ``level``, ``logger``, ``event``, ``message``,
  the session's and process's fields, then the message's fields, numbers as numbers.

Control characters are escaped in both, whatever the caller did (a value from the network
is escaped by the caller with :func:`mailslot.log.escape` as well), so a line is one event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

__all__ = ["Template", "json_line", "parse", "text_value", "unprintable_escaped"]

# A %-conversion as the % operator reads it; mapping keys ("%(name)s") are not templates.
_CONVERSION = re.compile(r"%[#0 +-]*(?:\d+)?(?:\.\d+)?[diouxXeEfFgGcrsa%]")
_KEY_BEFORE = re.compile(r"([a-z][a-z0-9_]*)=$")
_NOT_WORDS = re.compile(r"\S*=%\S*|%\S*|\S*=\S*")
_WORD = re.compile(r"[a-z0-9]+")
_CONTROLS = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]}
# Names the JSON object uses itself: a message's field of that name is prefixed.
RESERVED = frozenset({"time", "level", "logger", "event", "message", "exception"})
_CACHE_AT_MOST = 4096


class Template:
    """A message format cut at its conversions: literal text, and per argument its
    conversion and the field it fills (None for a conversion without ``key=``)."""

    __slots__ = ("conversions", "event", "format", "keys", "keyset", "literals", "quoted")

    def __init__(
        self,
        event: str,
        literals: tuple[str, ...],
        conversions: tuple[str, ...],
        keys: tuple[str | None, ...],
        format: str,
    ) -> None:
        self.event = event
        self.literals = literals
        self.conversions = conversions
        self.keys = keys
        self.keyset = frozenset(k for k in keys if k is not None)
        self.format = format  # the message, for the % operator (text)
        # Arguments whose value the text format may have to quote: fields converted by %s.
        self.quoted = tuple(
            i for i, (k, c) in enumerate(zip(keys, conversions, strict=True)) if k and c == "%s"
        )


_TEMPLATES: dict[str, Template] = {}


def event_name(msg: str) -> str:
    """``"login failed: user=%s"`` -> ``login_failed``; ``"%s: %s"`` -> ``message``.  The
    words before the first ``": "`` or ``", "``: ``"login refused, too many sessions"`` is
    ``login_refused``."""
    head = re.split(r": |, ", msg, maxsplit=1)[0]
    words = _WORD.findall(_NOT_WORDS.sub(" ", head).lower())
    return "_".join(words[:5]) or "message"


def parse(msg: str, formatted: bool) -> Template:
    """The template of ``msg``; ``formatted``: whether arguments come with it (a message
    without arguments is not a format, as logging has it: "100%" is text)."""
    key = msg if formatted else "\0" + msg
    template = _TEMPLATES.get(key)
    if template is not None:
        return template
    literals: list[str] = []
    conversions: list[str] = []
    keys: list[str | None] = []
    if formatted:
        position = 0
        literal = ""
        for match in _CONVERSION.finditer(msg):
            literal += msg[position : match.start()]
            position = match.end()
            if match.group() == "%%":
                literal += "%"
                continue
            before = _KEY_BEFORE.search(literal)
            literals.append(literal)
            conversions.append(match.group())
            keys.append(before.group(1) if before else None)
            literal = ""
        literals.append(literal + msg[position:])
    else:
        literals.append(msg)
    template = Template(
        event_name(msg), tuple(literals), tuple(conversions), tuple(keys), msg if formatted else ""
    )
    if len(_TEMPLATES) < _CACHE_AT_MOST:
        _TEMPLATES[key] = template
    return template


def unprintable_escaped(text: str) -> str:
    """``text`` with control characters as ``\\xNN`` and other unprintables as ``\\uNNNN``;
    a backslash stays one (a value escaped by the caller is not escaped twice)."""
    if text.isprintable():
        return text
    out = text.translate(_CONTROLS)
    if not out.isprintable():
        out = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in out)
    return out


def text_value(text: str) -> str:
    """A field's value in the text format: quoted when it holds a space or a quote, or is
    empty, so that a value can never look like a further field."""
    if text and " " not in text and '"' not in text:
        return text
    return '"' + text.replace('"', '\\"') + '"'


def _converted(conversion: str, value: object) -> str:
    if conversion == "%s":
        return value if type(value) is str else str(value)
    return conversion % (value,)


def render(template: Template, args: tuple[object, ...]) -> tuple[str, list[tuple[str, object]]]:
    """The text message of ``template`` with ``args`` and its fields as (name, value) pairs,
    raw values (numbers stay numbers).  TypeError when the arguments do not fit."""
    if len(args) != len(template.keys):
        raise TypeError("not all arguments converted during string formatting")
    literals = template.literals
    if not args:
        return unprintable_escaped(literals[0]), []
    parts: list[str] = []
    fields: list[tuple[str, object]] = []
    for literal, conversion, key, value in zip(
        literals, template.conversions, template.keys, args, strict=False
    ):
        parts.append(literal)
        text = unprintable_escaped(_converted(conversion, value))
        if key is None:
            parts.append(text)
            continue
        parts.append(text_value(text))
        if type(value) is int or type(value) is float:
            fields.append((key, value))
        else:
            fields.append((key, text))
    parts.append(literals[-1])
    return "".join(parts), fields


def render_text(template: Template, args: tuple[object, ...]) -> str:
    """The text message alone (what :func:`render` gives first, for less): the % operator
    does the work, after the values that need it are quoted."""
    if not args:
        return unprintable_escaped(template.literals[0])
    if template.quoted:
        values = list(args)
        for i in template.quoted:
            value = values[i]
            text = value if type(value) is str else str(value)
            if not text or " " in text or '"' in text or not text.isprintable():
                values[i] = text_value(unprintable_escaped(text))
        args = tuple(values)
    return unprintable_escaped(template.format % args)


def rendered(fields: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """(key, `` key=value``) for each of ``fields``, as the text format appends them."""
    return tuple(
        (key, f" {key}={text_value(unprintable_escaped(str(value)))}")
        for key, value in fields.items()
    )


def json_line(head: dict[str, object], fields: list[tuple[str, object]]) -> str:
    """One JSON object on one line: ``head`` (time, level, ...) then ``fields``."""
    record = dict(head)
    for key, value in fields:
        record[f"field_{key}" if key in RESERVED else key] = value
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
