"""A Python that an unprivileged user can run ``mailslot deliver`` with.

Postfix runs ``mailbox_command`` with the recipient's privileges, never root's.  The test
interpreter may live where such a user cannot reach it (pyenv under a 0700 /root); then the
system ``python3`` of the same major.minor version (so the same C-extension ABI) is used, with
the third-party packages mailslot imports copied into a directory everyone can read.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
# What `mailslot deliver` imports from site-packages (passwd-file schemes need passlib, argon2).
_PACKAGES = ("passlib", "argon2", "_argon2_cffi_bindings", "_cffi_backend", "cffi", "bcrypt")
_PROBE = "import mailslot.delivery.command, mailslot.auth.passwdfile, mailslot.store.maildir"


def _runs_as(user: str, python: str, pythonpath: str) -> bool:
    account = pwd.getpwnam(user)
    result = subprocess.run(
        [
            "setpriv",
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--clear-groups",
            python,
            "-c",
            _PROBE,
        ],
        env={"PYTHONPATH": pythonpath, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        cwd="/",
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def _copy_packages(target: Path) -> None:
    for name in _PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        if spec.submodule_search_locations:
            source = Path(next(iter(spec.submodule_search_locations)))
            shutil.copytree(source, target / source.name, dirs_exist_ok=True)
        else:
            shutil.copy2(spec.origin, target / Path(spec.origin).name)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def find(user: str, scratch: Path) -> tuple[str, str] | None:
    """``(python, PYTHONPATH)`` with which ``user`` can import mailslot, or None."""
    if _runs_as(user, sys.executable, str(SRC)):
        return sys.executable, str(SRC)
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None:
        return None
    version = subprocess.run(
        [system, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if version != str(sys.version_info[:2]):
        return None
    site = scratch / "site"
    site.mkdir(parents=True, exist_ok=True)
    _copy_packages(site)
    pythonpath = f"{SRC}{os.pathsep}{site}"
    return (system, pythonpath) if _runs_as(user, system, pythonpath) else None
