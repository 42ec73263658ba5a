"""Dovecot-compatible passwd-file user database.

The format is Dovecot's passwd-file (https://doc.dovecot.org/, "Passwd-file"): one user per
line, ``user:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields``, where only the first two
fields are required; blank lines and lines starting with ``#`` are ignored.  Password schemes
are those of :mod:`mailslot.auth.schemes`.

The file is re-read when its (mtime_ns, size, inode) changes, checked with one ``os.stat`` per
call, or at most once per ``recheck`` seconds (the server passes one second, which saves a
system call per login under load), so ``mailslot user add`` (an atomic rename) takes effect
on the next login, or within a second, without a signal.  If a later read fails the last
good table stays in use; if the file was never read, :class:`TemporaryAuthFailure` is raised
(``[SYS/TEMP]``, RFC 3206 section 4).

Malformed lines are logged by line number only: a line may hold a password.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mailslot.auth import schemes, usernames, verification
from mailslot.auth.base import AuthenticationFailed, TemporaryAuthFailure, User
from mailslot.auth.pool import VerifyPool
from mailslot.auth.verification import (
    Sleep,
    Verifier,
    answer_failure,
    choose_dummy,
    measure_costs,
    verify_or_dummy,
)

__all__ = ["Entry", "PasswdFileAuthenticator", "parse_entry"]

log = logging.getLogger(__name__)

_HOME_FIELD = 5


@dataclass(frozen=True, slots=True)
class Entry:
    """One user line: the name, the stored ``{SCHEME}data`` (may be empty) and the home."""

    name: str
    password: str
    home: str | None


def parse_entry(line: str) -> Entry | None:
    """Parse one line (without its line ending); ``None`` for a blank line or a comment.

    Raises ValueError for a line that is neither; the message never quotes the line.
    """
    if not line.strip() or line.startswith("#"):
        return None
    fields = line.split(":")
    if len(fields) < 2:
        raise ValueError("no password field")
    name = fields[0]
    try:
        usernames.validate(name)
    except usernames.InvalidUsername as exc:
        raise ValueError(str(exc)) from None
    home = fields[_HOME_FIELD] if len(fields) > _HOME_FIELD and fields[_HOME_FIELD] else None
    return Entry(name=name, password=fields[1], home=home)


@dataclass(frozen=True, slots=True)
class _Table:
    key: tuple[int, int, int]
    entries: Mapping[str, Entry]
    usable: frozenset[str]  # names whose stored hash verify() could ever accept
    dummy: str
    floor: float  # a failure is answered this long after the attempt began


class PasswdFileAuthenticator:
    """An :class:`~mailslot.auth.base.Authenticator` over a Dovecot passwd-file."""

    def __init__(
        self,
        path: Path,
        *,
        allow_md5: bool = False,
        verifier: Verifier | None = None,
        recheck: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        pool: VerifyPool | None = None,
        failure_floor: float = 0.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._path = Path(path)
        self._pool = pool
        self._floor = failure_floor
        self._sleep = sleep
        self._costs: dict[str, float] = {}  # per scheme, measured once per process
        self._recheck = recheck
        self._clock = clock
        self._checked_at: float | None = None
        self._allow_md5 = allow_md5
        # Injectable so a test can see which hash each attempt really verified against.
        self._verify: Verifier = verifier or functools.partial(schemes.verify, allow_md5=allow_md5)
        self._table: _Table | None = None
        self._warned_plaintext = False
        self._warned_unreadable = False

    @property
    def path(self) -> Path:
        return self._path

    def load(self) -> None:
        """Read the file now (at startup, to fail early); TemporaryAuthFailure if unreadable."""
        try:
            self._table = self._read()
        except OSError as exc:
            if self._table is None:
                raise TemporaryAuthFailure(f"cannot read {self._path}: {exc.strerror}") from None
            self._log_unreadable(exc)

    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        started = self._clock()
        table = await self._current()
        entry = table.entries.get(username) if usernames.is_valid(username) else None
        stored = entry.password if entry is not None and entry.name in table.usable else None
        matched = await verify_or_dummy(
            self._verify, password, stored, table.dummy, pool=self._pool, client=client
        )
        if not matched or entry is None:
            await answer_failure(started, table.floor, self._clock, self._sleep)
            raise AuthenticationFailed
        return User(name=entry.name, home=entry.home)

    async def lookup(self, username: str) -> User | None:
        if not usernames.is_valid(username):
            return None
        entry = (await self._current()).entries.get(username)
        return None if entry is None else User(name=entry.name, home=entry.home)

    async def _current(self) -> _Table:
        if self._recheck > 0:
            now = self._clock()
            last = self._checked_at
            if self._table is not None and last is not None and now - last < self._recheck:
                return self._table
            self._checked_at = now
        try:
            st = os.stat(self._path)
        except OSError as exc:
            if self._table is None:
                raise TemporaryAuthFailure(f"cannot read {self._path}: {exc.strerror}") from None
            self._log_unreadable(exc)
            return self._table
        if self._table is None or self._table.key != (st.st_mtime_ns, st.st_size, st.st_ino):
            try:
                # A fresh table may need the fallback dummy hash, which is slow to make.
                self._table = await asyncio.to_thread(self._read)
            except OSError as exc:
                if self._table is None:
                    raise TemporaryAuthFailure(
                        f"cannot read {self._path}: {exc.strerror}"
                    ) from None
                self._log_unreadable(exc)
        return self._table

    def _log_unreadable(self, exc: OSError) -> None:
        if not self._warned_unreadable:
            self._warned_unreadable = True
            log.warning(
                "passwd-file %s unreadable (%s); keeping the users loaded before",
                self._path,
                exc.strerror,
            )

    def _read(self) -> _Table:
        with open(self._path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        self._warned_unreadable = False
        entries: dict[str, Entry] = {}
        usable: set[str] = set()
        plaintext = False
        for number, raw in enumerate(data.split(b"\n"), start=1):
            try:
                entry = parse_entry(raw.removesuffix(b"\r").decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
                log.warning("passwd-file %s line %d skipped: %s", self._path, number, reason)
                continue
            if entry is None:
                continue
            if entry.name in entries:
                log.warning(
                    "passwd-file %s line %d: duplicate user, first one kept", self._path, number
                )
                continue
            entries[entry.name] = entry
            if schemes.identify(entry.password, allow_md5=self._allow_md5) is None:
                log.warning(
                    "passwd-file %s line %d: empty, unsupported or refused password scheme;"
                    " the user cannot log in",
                    self._path,
                    number,
                )
                continue
            usable.add(entry.name)
            plaintext = plaintext or schemes.is_plaintext(entry.password)
        if plaintext and not self._warned_plaintext:
            self._warned_plaintext = True
            log.warning(
                "passwd-file %s stores plaintext passwords; use `mailslot user passwd`"
                " to hash them",
                self._path,
            )
        hashes = [e.password for e in entries.values() if e.name in usable]
        # Every scheme's cost, the dummy's included (an empty table's is argon2id): the
        # failure floor is the slowest of them, and the dummy the costliest.
        costs = measure_costs(
            [*hashes, choose_dummy(hashes, allow_md5=self._allow_md5)],
            allow_md5=self._allow_md5,
            known=self._costs,
        )
        self._costs = costs
        dummy = choose_dummy(hashes, allow_md5=self._allow_md5, costs=costs)
        present = {schemes.identify(h, allow_md5=self._allow_md5) for h in [*hashes, dummy]}
        return _Table(
            key=(st.st_mtime_ns, st.st_size, st.st_ino),
            entries=entries,
            usable=frozenset(usable),
            dummy=dummy,
            floor=verification.failure_floor(
                {s: c for s, c in costs.items() if s in present}, self._floor
            ),
        )
