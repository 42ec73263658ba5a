"""Where the configuration text comes from: ``doveconf -n``, else the files themselves.

``doveconf -c FILE -n`` prints the configuration Dovecot itself would run, includes and
variables resolved, defaults left out (:data:`mailslot.dovecotconf.mapping.DEFAULTS` fills
them in).  It hides ``ssl_key``; ``doveconf -h ssl_key`` prints the ``<path`` alone, and no
other hidden value is read.  Without Dovecot installed, :func:`parser.parse_file` reads the
files and their ``!include`` directives.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mailslot.dovecotconf.parser import DovecotConfigError, Section, Setting, parse_file, parse_text

_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Loaded:
    root: Section
    how: str  # "doveconf -n" or "the files"


def _doveconf(binary: str, path: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            [binary, "-c", str(path), *args],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DovecotConfigError(f"{binary} failed: {exc}") from exc
    if done.returncode != 0:
        message = done.stderr.strip() or f"exit status {done.returncode}"
        raise DovecotConfigError(f"doveconf -c {path}: {message}")
    return done.stdout


def load(path: Path, *, doveconf: str | None = None, use_doveconf: bool = True) -> Loaded:
    """Read ``path``; through ``doveconf`` (found on PATH unless given) when ``use_doveconf``."""
    binary = (doveconf or shutil.which("doveconf")) if use_doveconf else None
    if binary is None:
        return Loaded(parse_file(path), "the files")
    root = parse_text(_doveconf(binary, path, "-n"), "doveconf -n", path.parent)
    hidden = root.settings.get("ssl_key")
    if hidden is not None and not hidden.value:
        value = _doveconf(binary, path, "-h", "ssl_key").strip()
        root.settings["ssl_key"] = Setting("ssl_key", value, hidden.where)
    return Loaded(root, "doveconf -n")
