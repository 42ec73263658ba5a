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

Extra fields (field 8 on) are Dovecot's (:mod:`mailslot.auth.extrafields`); every field that is
not supported, a hash of a legacy scheme ``[auth] legacy_schemes`` does not list, and a name
``[auth] username_format`` can never produce are logged when the file is read, one line per
kind of problem and file (with how many lines and the first), never per login.

With ``{domain}`` in ``[auth] passwd_file`` (Dovecot's ``args = /etc/auth/%d/passwd``) each
domain has its own file: :class:`DomainPasswdFiles`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from mailslot.auth import extrafields, schemes, usernameformat, usernames, verification
from mailslot.auth.base import AuthenticationFailed, TemporaryAuthFailure, User
from mailslot.auth.extrafields import ExtraFields
from mailslot.auth.pool import VerifyPool
from mailslot.auth.verification import (
    Sleep,
    Verifier,
    answer_failure,
    choose_dummy,
    measure_costs,
    verify_or_dummy,
)

__all__ = ["DomainPasswdFiles", "Entry", "PasswdFileAuthenticator", "domain_of", "parse_entry"]

log = logging.getLogger(__name__)

_NO_EXTRA = ExtraFields()  # the default of an Entry made by hand


@dataclass(frozen=True, slots=True)
class Entry:
    """One user line: the name, the stored ``{SCHEME}data`` (may be empty), the home and
    the extra fields."""

    name: str
    password: str
    home: str | None
    extra: ExtraFields = field(default=_NO_EXTRA)


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
    count = len(fields)
    extra = extrafields.parse_fields(
        fields[2] if count > 2 else "",
        fields[3] if count > 3 else "",
        ":".join(fields[7:]) if count > 7 else "",
    )
    home = extra.home or (fields[5] if count > 5 and fields[5] else None)
    return Entry(name=name, password=fields[1], home=home, extra=extra)


@dataclass(frozen=True, slots=True)
class _Table:
    key: tuple[int, int, int]
    entries: Mapping[str, Entry]
    usable: frozenset[str]  # names whose stored hash verify() could ever accept
    refused_legacy: Mapping[str, str]  # name -> its legacy scheme, not in legacy_schemes
    dummy: str
    floor: float  # a failure is answered this long after the attempt began


class PasswdFileAuthenticator:
    """An :class:`~mailslot.auth.base.Authenticator` over a Dovecot passwd-file."""

    def __init__(
        self,
        path: Path,
        *,
        allow_md5: bool = False,
        legacy: Collection[str] = (),
        username_format: str | None = None,
        maildir: str | None = None,
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
        self._legacy = frozenset(legacy)
        self._format = username_format
        self._maildir = maildir
        # Injectable so a test can see which hash each attempt really verified against.
        self._verify: Verifier = verifier or functools.partial(
            schemes.verify, allow_md5=allow_md5, legacy=self._legacy
        )
        self._table: _Table | None = None
        self._problems: list[str] = []
        self._warned_plaintext = False
        self._warned_unreadable = False

    @property
    def path(self) -> Path:
        return self._path

    @property
    def floor(self) -> float:
        """When a failure is answered (seconds after the attempt); 0 before the first read."""
        return 0.0 if self._table is None else self._table.floor

    @property
    def problems(self) -> list[str]:
        """What the last read found, as logged (for ``check-config``)."""
        return list(self._problems)

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
            if entry is not None and entry.name in table.refused_legacy:
                log.warning(
                    "login refused: user=%s has a %s password, which [auth] legacy_schemes"
                    " does not list",
                    entry.name,
                    table.refused_legacy[entry.name],
                )
            raise AuthenticationFailed
        if entry.extra.restricted:
            # The session may still refuse this user (auth.policy): answer no sooner than a
            # wrong password is, so the time does not say the password was right.
            await answer_failure(started, table.floor, self._clock, self._sleep)
        scheme = schemes.identify(entry.password, legacy=self._legacy, allow_md5=self._allow_md5)
        legacy = scheme if scheme in schemes.LEGACY_SCHEMES else None
        return _user(entry, legacy)

    async def lookup(self, username: str) -> User | None:
        if not usernames.is_valid(username):
            return None
        entry = (await self._current()).entries.get(username)
        return None if entry is None else _user(entry)

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
        refused_legacy: dict[str, str] = {}
        problems = _Problems()
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
            entry = self._checked(entry, number, problems)
            entries[entry.name] = entry
            if (
                schemes.identify(entry.password, allow_md5=self._allow_md5, legacy=self._legacy)
                is None
            ):
                scheme = schemes.scheme_name(entry.password)
                if scheme in schemes.LEGACY_SCHEMES:
                    refused_legacy[entry.name] = scheme
                    problems.add(
                        number,
                        f"{scheme} passwords are refused unless [auth] legacy_schemes lists"
                        f" {scheme}; those users cannot log in",
                    )
                    continue
                log.warning(
                    "passwd-file %s line %d: empty, unsupported or refused password scheme;"
                    " the user cannot log in",
                    self._path,
                    number,
                )
                continue
            usable.add(entry.name)
            plaintext = plaintext or schemes.is_plaintext(entry.password)
        self._problems = problems.log(self._path)
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
        md5, legacy = self._allow_md5, self._legacy
        costs = measure_costs(
            [*hashes, choose_dummy(hashes, allow_md5=md5, legacy=legacy)],
            allow_md5=md5,
            legacy=legacy,
            known=self._costs,
        )
        self._costs = costs
        dummy = choose_dummy(hashes, allow_md5=md5, legacy=legacy, costs=costs)
        present = {schemes.identify(h, allow_md5=md5, legacy=legacy) for h in [*hashes, dummy]}
        return _Table(
            key=(st.st_mtime_ns, st.st_size, st.st_ino),
            entries=entries,
            usable=frozenset(usable),
            refused_legacy=refused_legacy,
            dummy=dummy,
            floor=verification.failure_floor(
                {s: c for s, c in costs.items() if s in present}, self._floor
            ),
        )

    def _checked(self, entry: Entry, number: int, problems: _Problems) -> Entry:
        """``entry`` with the file-wide checks applied; each problem noted for the log."""
        extra = entry.extra
        for problem in extra.problems:
            problems.add(number, problem)
        if self._format is not None:
            formatted = usernameformat.apply(self._format, entry.name)
            if formatted != entry.name:
                problems.add(
                    number,
                    f"user name is not as [auth] username_format ({self._format}) makes"
                    " login names; the user can never log in (Dovecot's auth_username_format"
                    " does the same)",
                )
        elsewhere = (
            extra.mail is not None
            and self._maildir is not None
            and _same_place(extra.mail) != _same_place(self._maildir)
        )
        if elsewhere and not extra.mail_unsupported:
            problems.add(
                number,
                "userdb_mail names another place than [store] maildir: the user's"
                " maildrop is not opened",
            )
            entry = replace(entry, extra=replace(extra, mail_unsupported=True))
        # As root the store gives new files these ids (store.base.Owner); otherwise it can't.
        euid, egid = os.geteuid(), os.getegid()
        if euid != 0 and (extra.uid not in (None, euid) or extra.gid not in (None, egid)):
            problems.add(
                number,
                "uid/gid differ from the ids mailslot runs as; files are created as"
                f" uid {euid} gid {egid} (owners change only as root)",
            )
        return entry


def _user(entry: Entry, legacy_scheme: str | None = None) -> User:
    return User(name=entry.name, home=entry.home, extra=entry.extra, legacy_scheme=legacy_scheme)


def _same_place(template: str) -> str:
    return "{home}/" + template[2:] if template.startswith("~/") else template


class _Problems:
    """Problems found in one read of a file, one log line per kind: count and first line."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[int, int]] = {}

    def add(self, number: int, problem: str) -> None:
        first, count = self._found.get(problem, (number, 0))
        self._found[problem] = (first, count + 1)

    def log(self, path: Path) -> list[str]:
        lines = []
        for problem, (first, count) in self._found.items():
            where = f"line {first}" if count == 1 else f"{count} lines, first line {first}"
            lines.append(f"passwd-file {path} {where}: {problem}")
            log.warning("%s", lines[-1])
        return lines


# A domain as DNS has it (RFC 1035 section 2.3.1, with RFC 1123's leading digits): letters,
# digits and inner hyphens in labels of up to 63, at most 253 in all.  No "/", no "..", no
# leading dot: it cannot leave the template's directory.
_DOMAIN = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)


def domain_of(username: str) -> str | None:
    """The domain part of ``user@domain`` if it is a valid DNS name, else ``None``."""
    _, at, domain = username.rpartition("@")
    return domain if at and _DOMAIN.match(domain) else None


class DomainPasswdFiles:
    """One passwd-file per domain: ``[auth] passwd_file = "/etc/mail/{domain}/passwd"``,
    as Dovecot's ``args = /etc/auth/%d/passwd``.

    The login name must be ``user@domain`` (after ``[auth] username_format``); the domain
    is checked to be a DNS name before it reaches a path, and everything from the
    ``{domain}`` component down is looked at without following symlinks, as the Maildir
    store walks below its template's fixed directories: a symlink there is refused with a
    log line (once per domain).  Each file is read, reloaded and checked as a single
    ``passwd_file`` is (:class:`PasswdFileAuthenticator`, made by ``make``); a domain
    without a file, or a name without a domain, is an unknown user: verified against a
    dummy hash and answered no sooner than the slowest table loaded (or an argon2id check),
    with the same reply.
    """

    def __init__(
        self,
        template: str,
        make: Callable[[Path], PasswdFileAuthenticator],
        *,
        pool: VerifyPool | None = None,
        failure_floor: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._template = template
        self._make = make
        self._pool = pool
        self._configured = failure_floor
        self._clock = clock
        self._sleep = sleep
        self._files: dict[str, PasswdFileAuthenticator] = {}
        head = template.split("{domain}")[0]
        # The directory holding the first component with the domain in it.
        self._fixed = Path(head) if head.endswith("/") else Path(head).parent
        self._unknown_floor: float | None = None
        self._warned: set[str] = set()

    @property
    def template(self) -> str:
        return self._template

    def load(self) -> None:
        """Measure what an unknown domain's dummy check costs (blocking; at start-up)."""
        self._unknown_floor = self._measure_unknown()

    def _measure_unknown(self) -> float:
        dummy = verification.fallback_dummy()
        return verification.failure_floor(measure_costs([dummy]), self._configured)

    def path_for(self, domain: str) -> Path:
        return Path(self._template.replace("{domain}", domain))

    def _for(self, username: str) -> PasswdFileAuthenticator | None:
        domain = domain_of(username) if usernames.is_valid(username) else None
        if domain is None:
            return None
        known = self._files.get(domain)
        if known is not None:
            return known
        path = self.path_for(domain)
        if not self._plain_file(domain, path):
            return None
        made = self._files[domain] = self._make(path)
        return made

    def _plain_file(self, domain: str, path: Path) -> bool:
        """Whether ``path`` exists with no symlink from the template's fixed part down."""
        current = self._fixed
        for part in path.relative_to(self._fixed).parts:
            current = current / part
            try:
                st = os.lstat(current)
            except OSError:
                return False
            if stat.S_ISLNK(st.st_mode):
                if domain not in self._warned:
                    self._warned.add(domain)
                    log.warning(
                        "passwd-file %s not used: %s is a symlink, which is not followed",
                        path,
                        current,
                    )
                return False
        return True

    def _floor(self) -> float:
        floors = [self._unknown_floor or 0.0, *(f.floor for f in self._files.values())]
        return max(floors)

    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        started = self._clock()
        auth = self._for(username)
        if auth is not None:
            return await auth.authenticate(username, password, client=client)
        if self._unknown_floor is None:
            self._unknown_floor = await asyncio.to_thread(self._measure_unknown)
        dummy = verification.fallback_dummy()
        await verify_or_dummy(schemes.verify, password, None, dummy, pool=self._pool, client=client)
        await answer_failure(started, self._floor(), self._clock, self._sleep)
        raise AuthenticationFailed

    async def lookup(self, username: str) -> User | None:
        auth = self._for(username)
        return None if auth is None else await auth.lookup(username)
