"""Logging: one line per event, with the session id and the peer; control bytes escaped.

Every value that came from the network goes through :func:`escape` before it is formatted,
so a client cannot forge log lines with CR/LF or terminal escapes.  Passwords and SASL
payloads are never passed to a logger.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]} | {0x5C: "\\\\"}


def escape(value: object, limit: int = 200) -> str:
    """Render ``value`` on one line: control characters as ``\\xNN``, cut at ``limit``."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    out = text.translate(_ESCAPES)
    # C1 controls and other non-printables (e.g. U+2028) would break "one event, one line".
    if not out.isprintable():
        out = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in out)
    return out


class SessionLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each message with ``session=<id> peer=<address>``."""

    def __init__(self, logger: logging.Logger, session: str, peer: str) -> None:
        super().__init__(logger, {"session": session, "peer": peer})
        self._prefix = f"session={session} peer={peer} "

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return self._prefix + str(msg), kwargs


def setup(level: str = "info") -> None:
    """Log to stderr, one line per record."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
