"""What a server costs, read from /proc: its process tree, PSS and CPU time.

PSS (proportional set size) is used rather than RSS because Dovecot forks a process per
session: shared libraries and copy-on-write pages would be counted once per process by RSS.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces and parentheses; fields start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User+system time of the tree, including children it has reaped (cutime/cstime).

    Dovecot's master reaps every finished login and pop3 process, so their time lands in its
    cutime/cstime; a live process's own time is counted once, by itself.
    """
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / _CLK_TCK


def settled_pss_bytes(root: int, timeout: float = 10.0, interval: float = 0.25) -> int:
    """The tree's PSS once two readings ``interval`` apart agree within 0.5 %.

    A server answers its first greeting while other workers may still be starting (reading
    the user database, importing): a baseline taken then is off by megabytes either way.
    """
    deadline = time.monotonic() + timeout
    last = pss_bytes(tree(root))
    while True:
        time.sleep(interval)
        now = pss_bytes(tree(root))
        if abs(now - last) <= last * 0.005 or time.monotonic() >= deadline:
            return now
        last = now
