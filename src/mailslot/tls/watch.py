"""Notice that certificate or key files changed, so that a renewal needs no SIGHUP.

A renewal (certbot, acme.sh, an operator's ``cp``) replaces the files while the server runs.
The process that reloads on SIGHUP (the supervisor parent with several workers, the lone
worker otherwise) asks :meth:`FileWatch.poll` every ``[tls] reload_check_interval`` seconds
whether to reload.  It looks at ``stat()`` of every file (following symlinks, as certbot's
``live/`` links into ``archive/``): device, inode, size, modification and change time.  Cheap:
a few ``stat`` calls every few seconds, nothing per connection.

A renewal is not written in one instant: the chain first, the key next, or one file being
written while it is read.  So a change is acted on only once the files have stayed the same
for a whole interval (one more look after the change), and the reload itself runs every
certificate check (:mod:`mailslot.tls.certificates`): a half-written chain or a key that
does not match yet fails them, the old certificate stays, the failure is logged once, and the
next change of the files is tried again.  The clock and ``stat`` are parameters, so the tests
drive it with a fake clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

Signature = tuple[tuple[int, int, int, int, int] | None, ...]


def _stat(path: Path) -> tuple[int, int, int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None  # missing for a moment (a symlink being replaced): a change like any other
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class FileWatch:
    """When to reload ``paths``; see the module docstring."""

    def __init__(
        self,
        paths: Sequence[Path],
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        stat: Callable[[Path], tuple[int, int, int, int, int] | None] = _stat,
    ) -> None:
        self.paths = tuple(paths)
        self.interval = interval
        self._clock = clock
        self._stat = stat
        self._loaded = self.signature()  # what the contexts in use were loaded from
        self._pending: Signature | None = None  # a change seen at the last look
        self._next = clock() + interval

    def signature(self) -> Signature:
        return tuple(self._stat(path) for path in self.paths)

    def due(self) -> bool:
        """Whether a look is due now (and, if so, schedule the next one)."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True

    def until_due(self) -> float:
        """Seconds until the next look; 0 if it is due."""
        return max(0.0, self._next - self._clock())

    def poll(self) -> Signature | None:
        """The files' signature if they changed and have stayed so since the last look (then
        reload, and report with :meth:`loaded`); ``None`` otherwise."""
        now = self.signature()
        if now == self._loaded:
            self._pending = None
            return None
        if now != self._pending:
            self._pending = now  # changed since the last look: may be half written
            return None
        return now

    def loaded(self, signature: Signature) -> None:
        """The files as they were at ``signature`` were tried (loaded, or refused and logged):
        look for the next change, not at these again."""
        self._loaded = signature
        self._pending = None
