"""What a test of a privilege drop needs: root, and an interpreter the dropped user can run.

A server started as root serves as ``[server] user``, and that process imports modules after
the drop (mailslot's own lazy imports, passlib's hash schemes).  An interpreter under a 0700
home (pyenv under /root) cannot be read by it: such a machine needs mailslot installed into a
virtualenv in a world-readable place (docs/configuration.md, ``[server]``).  Under CI=true a
missing precondition fails the test rather than hide the feature behind a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .programs import in_ci

#: The account the tests drop to: present on every Debian and Ubuntu system, so nothing is
#: created on the machine and nothing is left behind when a test is killed half-way.
USER = "nobody"
# What a worker imports after the drop, and what `mailslot deliver` does.
_PROBE = (
    "import mailslot.server.runner, mailslot.delivery.lmtp, mailslot.delivery.command, "
    "mailslot.auth.passwdfile, passlib.hash"
)


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        _unavailable("dropping privileges needs the tests to run as root")


def require_importable_as(user: str = USER) -> None:
    """Fail (CI) or skip unless ``user`` can import mailslot with this interpreter."""
    require_root()
    try:
        pwd.getpwnam(user)
    except KeyError:
        _unavailable(f"there is no user {user!r} to drop to")
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    if runuser is None:
        _unavailable("runuser (util-linux) is not installed")
    assert runuser is not None
    result = subprocess.run(
        [runuser, "-u", user, "--", sys.executable, "-c", _PROBE],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        capture_output=True,
        cwd="/",
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        last = (result.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        _unavailable(
            f"user {user!r} cannot import mailslot with {sys.executable} ({last}): install "
            "mailslot into a virtualenv on the system Python in a world-readable directory"
        )


@contextmanager
def shared_directory() -> Iterator[Path]:
    """A fresh directory every user can traverse (0755), outside pytest's 0700 tmp tree."""
    path = Path(tempfile.mkdtemp(prefix="mailslot-priv-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def proc_ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/PID/status: real, effective, saved, fs ids."""
    ids: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            ids[key] = [int(field) for field in value.split()]
    return ids


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux 3.5+, CONFIG_PROC_CHILDREN)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
