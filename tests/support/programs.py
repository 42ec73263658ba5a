"""External programs the integration tests drive (curl, fetchmail, mpop, openssl, dovecot).

A missing program skips the test with the reason, except under ``CI=true``: CI installs every
program (``scripts/test``), so there a missing one is a broken environment and fails the test.
"""

from __future__ import annotations

import os
import shutil

import pytest

_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in _SBIN:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_program(name: str) -> str:
    """Return the program's path; skip (or fail under ``CI=true``) if it is not installed."""
    path = find_program(name)
    if path is None:
        message = f"{name} is not installed (scripts/test installs it with apt-get)"
        if in_ci():
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    return path
