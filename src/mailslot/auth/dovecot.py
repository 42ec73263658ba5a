"""Logins checked by a running Dovecot's auth service (``[auth] backend = "dovecot"``).

Sites whose Dovecot auth service already fronts LDAP, PAM or SQL keep it: mailslot speaks
Dovecot's documented auth client protocol (version 1, "Dovecot Authentication Protocol" in
Dovecot's developer documentation) over the ``auth-client`` Unix socket, as Dovecot's own
``pop3-login`` does:

- Handshake: the client sends ``VERSION 1 2`` and ``CPID <pid>``; the server answers with its
  ``VERSION``, ``MECH`` lines (the mechanisms it offers), ``SPID``, ``CUID``, ``COOKIE`` and
  ``DONE``.  The major version must be 1 and ``PLAIN`` must be offered.
- Each login is ``AUTH <id> PLAIN service=pop3 [lip= rip= lport= rport=] [secured]
  resp=<base64 of NUL user NUL password>`` (the SASL PLAIN message, RFC 4616); ids are
  unique on the connection, so one connection carries many logins at once.
- The reply is ``OK <id> user=<name> ...``, ``FAIL <id> [user=] [reason=] [temp]
  [code=temp_fail]`` or ``CONT <id> <data>`` (a challenge PLAIN never needs; answered as a
  failure).  Parameters are TAB separated and "tab-escaped" with ``\\x01``.

What the client gets is what Dovecot 2.3's own ``pop3-login`` answers for the same reply
(``src/login-common/client-common-auth.c``; compared on the wire by
tests/integration/test_dovecot_auth.py), through the session's one refusal path
(:class:`~mailslot.auth.base.Refused`, :mod:`mailslot.auth.restrictions`):

- ``OK`` with ``nologin``: the password was right (Dovecot's auth service answers ``OK`` only
  then, and removes ``nologin`` from a ``FAIL``), the user may not log in:
  ``-ERR [AUTH]`` and ``reason``'s text, else "Login disabled for this user"; ``nodelay``
  spares the failure penalty, as for a passwd-file's ``nologin``.  With ``host`` as well it
  is a referral: a bare ``-ERR`` and ``reason``'s text, else "Try this server instead."
- ``OK`` with ``proxy`` or ``proxy_maybe`` (with or without ``nologin``: Dovecot proxies
  first): mailslot does not proxy, so the login is refused as a wrong password is, after
  the same time, with a log line.
- ``FAIL``, whatever its fields: a wrong password's reply.  Dovecot answers ``allow_nets``
  and the like with a bare ``FAIL``, as a wrong password.  Its pop3-login would show a
  ``FAIL``'s ``reason`` (PAM's "Password expired" with ``code=pass_expired``, a passdb's
  reason on a disabled user); mailslot logs it and never sends it: a ``FAIL`` does not say
  whether the password was right, and some passdbs refuse before checking it.
- ``FAIL`` with ``temp`` or ``code=temp_fail``, a socket that is missing or refuses
  connections, a broken handshake or a lost connection are
  :class:`~mailslot.auth.base.TemporaryAuthFailure` (``-ERR [SYS/TEMP]``) with a log line.

Timing: Dovecot delays every failure itself (``auth_failure_delay``, 2 s by default), for an
unknown user and a wrong password alike.  On top of that a failure is answered no earlier than
the backend's floor: ``[auth] failure_time_floor``, raised to the longest of the last 64
failures Dovecot answered (each counted up to 15 s), so a name refused here without asking
Dovecot (one :func:`mailslot.auth.usernames.is_valid` rejects) waits as long as one Dovecot
refused, and one slow answer (an LDAP server that stalled) does not slow every later failure
for good.  Until Dovecot has refused anyone, the floor is Dovecot's default delay (2 s).

With ``[auth.dovecot] userdb_socket`` (Dovecot's ``auth-userdb`` socket, the master protocol's
``USER`` lookup) a login's home directory (``home=``) comes from Dovecot's userdb and is used
for ``{home}`` in ``[store] maildir``; :meth:`DovecotAuthenticator.lookup` (LMTP delivery)
needs it too.  Other userdb fields (``mail``, ``uid``, ``gid``, quota) are not used.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from mailslot.auth import restrictions, usernames
from mailslot.auth.base import (
    AuthenticationFailed,
    LoginSource,
    Refused,
    TemporaryAuthFailure,
    User,
    login_source,
)
from mailslot.auth.restrictions import Refusal
from mailslot.auth.verification import answer_failure
from mailslot.log import escape

__all__ = ["DovecotAuthenticator", "parse_line", "refusal", "tab_escape", "tab_unescape"]

log = logging.getLogger(__name__)

_MAJOR = 1
_LINE_LIMIT = 65536  # Dovecot's own limit is 16384 octets a line
# How long an observed failure may raise the floor, and how many recent ones count.
_FLOOR_CAP = 15.0
_FLOOR_WINDOW = 64
_ASSUMED_DELAY = 2.0  # Dovecot's default auth_failure_delay

_ESCAPES = {"0": "\x00", "1": "\x01", "t": "\t", "r": "\r", "n": "\n", "l": "\n"}


def tab_escape(value: str) -> str:
    """Dovecot's tab-escaping: \\x01 then 1, t, r, n or 0 for the octets a field cannot hold."""
    return (
        value.replace("\x01", "\x011")
        .replace("\t", "\x01t")
        .replace("\r", "\x01r")
        .replace("\n", "\x01n")
        .replace("\x00", "\x010")
    )


def tab_unescape(value: str) -> str:
    if "\x01" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == "\x01":
            following = next(chars, "")
            out.append(_ESCAPES.get(following, following))
        else:
            out.append(char)
    return "".join(out)


def parse_line(line: bytes) -> list[str]:
    """One protocol line (without its LF) as unescaped TAB-separated fields."""
    text = line.decode("utf-8", errors="replace")
    return [tab_unescape(field) for field in text.split("\t")]


def options(fields: Iterable[str]) -> dict[str, str]:
    """Optional parameters: ``name=value``, or a bare boolean ``name`` (value "")."""
    found: dict[str, str] = {}
    for field in fields:
        name, _, value = field.partition("=")
        found.setdefault(name, value)
    return found


def auth_command(
    request: int, service: str, username: str, password: str, source: LoginSource | None
) -> bytes:
    """The ``AUTH`` line of one PLAIN login (RFC 4616 message: empty authzid)."""
    message = b"\x00" + username.encode("utf-8") + b"\x00" + password.encode("utf-8")
    # no-penalty: mailslot's own per-address penalty (mailslot.server.penalty) applies.
    fields = [f"AUTH\t{request}\tPLAIN\tservice={tab_escape(service)}\tno-penalty"]
    if source is not None:
        if source.local is not None:
            fields.append(f"lip={tab_escape(source.local[0])}\tlport={source.local[1]}")
        if source.remote is not None:
            fields.append(f"rip={tab_escape(source.remote[0])}\trport={source.remote[1]}")
        if source.secured:
            fields.append("secured")
    fields.append("resp=" + base64.b64encode(message).decode("ascii"))
    return ("\t".join(fields) + "\n").encode("utf-8")


def refusal(found: dict[str, str]) -> Refusal | None:
    """The refusal of an ``OK`` reply's fields (``found``, from :func:`options`), as Dovecot's
    login process answers them, or ``None`` to log the user in.

    ``proxy`` / ``proxy_maybe`` first: Dovecot proxies such a user even with ``nologin``;
    mailslot does not proxy and refuses as for a wrong password.  Then ``nologin``, with its
    ``reason`` and ``nodelay`` read as a passwd-file's (:class:`restrictions.Reader`); with
    ``host`` too it is a referral (Dovecot's pop3-login: a bare ``-ERR``).  ``host`` without
    ``nologin`` or ``proxy`` changes nothing (Dovecot logs such a user in)."""
    if "proxy" in found or "proxy_maybe" in found:
        return Refusal("auth", None, "proxy: mailslot does not proxy", True, "fields")
    if "nologin" not in found:
        return None
    reader = restrictions.Reader()
    for key in ("nologin", "reason", "nodelay"):
        if key in found:
            reader.add(key, found[key])
    refused = restrictions.check(reader.result(), None, None)
    if refused is not None and "host" in found:
        # A referral: "-ERR <reason>", else "-ERR Try this server instead." (no code).
        text = reader.result().reason
        return replace(refused, kind="referral", text=text, log="nologin, referred elsewhere")
    return refused


class _Unavailable(Exception):
    """The auth service cannot be asked; the text is safe to log."""


class _Connection:
    """One handshaken ``auth-client`` connection; replies are matched to requests by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[list[str]]] = {}
        self.ids = itertools.count(1)
        self.task: asyncio.Task[None] | None = None
        self.broken: str | None = None

    async def handshake(self) -> None:
        self.writer.write(f"VERSION\t{_MAJOR}\t2\nCPID\t{os.getpid()}\n".encode())
        await self.writer.drain()
        mechanisms: set[str] = set()
        version_seen = False
        while True:
            line = await self.reader.readline()
            if not line.endswith(b"\n"):
                raise _Unavailable("connection closed during the handshake")
            fields = parse_line(line[:-1])
            if fields[0] == "VERSION":
                if len(fields) < 2 or fields[1] != str(_MAJOR):
                    raise _Unavailable(f"unsupported protocol version {escape(fields[1:2])}")
                version_seen = True
            elif fields[0] == "MECH" and len(fields) > 1:
                mechanisms.add(fields[1].upper())
            elif fields[0] == "DONE":
                break
        if not version_seen:
            raise _Unavailable("no VERSION in the handshake")
        if "PLAIN" not in mechanisms:
            raise _Unavailable("the auth service does not offer PLAIN (auth_mechanisms)")

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._read_replies())

    async def _read_replies(self) -> None:
        reason = "connection closed by the auth service"
        try:
            while True:
                line = await self.reader.readline()
                if not line.endswith(b"\n"):
                    break
                fields = parse_line(line[:-1])
                if len(fields) < 2 or not fields[1].isdigit():
                    continue  # e.g. a notice this client does not use
                future = self.pending.pop(int(fields[1]), None)
                if future is not None and not future.done():
                    future.set_result(fields)
        except (OSError, ValueError) as exc:
            reason = f"connection to the auth service lost: {type(exc).__name__}"
        finally:
            self.fail_all(reason)

    def fail_all(self, reason: str) -> None:
        self.broken = reason
        for future in self.pending.values():
            if not future.done():
                future.set_exception(_Unavailable(reason))
        self.pending.clear()
        self.writer.close()

    async def request(self, line_for: Callable[[int], bytes]) -> list[str]:
        if self.broken is not None:
            raise _Unavailable(self.broken)
        request = next(self.ids)
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self.pending[request] = future
        try:
            self.writer.write(line_for(request))
            await self.writer.drain()
            return await future
        except OSError as exc:
            self.fail_all(f"cannot write to the auth service: {type(exc).__name__}")
            raise _Unavailable(self.broken or "") from None
        finally:
            self.pending.pop(request, None)

    async def aclose(self) -> None:
        self.fail_all("closed")
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class DovecotAuthenticator:
    """An :class:`~mailslot.auth.base.Authenticator` that asks Dovecot's auth service."""

    uses_login_source = True  # the session sets auth.base.login_source (rip, lip, secured)

    def __init__(
        self,
        socket: Path,
        *,
        service: str = "pop3",
        userdb_socket: Path | None = None,
        failure_floor: float = 0.0,
        timeout: float = 30.0,
        assumed_delay: float = _ASSUMED_DELAY,
    ) -> None:
        """``timeout``: how long one reply may take before the login is a temporary failure
        (Dovecot's own failure delay and a slow LDAP both fit well inside it);
        ``assumed_delay``: the failure floor until Dovecot has refused anyone."""
        self._socket = socket
        self._service = service
        self._userdb_socket = userdb_socket
        self._configured_floor = failure_floor
        self._assumed_delay = assumed_delay
        self._recent: collections.deque[float] = collections.deque(maxlen=_FLOOR_WINDOW)
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _connected(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._connecting is None:
            # First use, or a new event loop (tests): nothing of the old one is usable.
            self._loop, self._connecting, self._connection = loop, asyncio.Lock(), None
        async with self._connecting:
            current = self._connection
            if current is not None and current.broken is None:
                return current
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(str(self._socket), limit=_LINE_LIMIT),
                    self._timeout,
                )
            except (OSError, TimeoutError) as exc:
                raise _Unavailable(f"cannot connect to {self._socket}: {_describe(exc)}") from None
            connection = _Connection(reader, writer)
            try:
                await asyncio.wait_for(connection.handshake(), self._timeout)
            except (OSError, TimeoutError, ValueError, _Unavailable) as exc:
                writer.close()
                what = str(exc) if isinstance(exc, _Unavailable) else _describe(exc)
                raise _Unavailable(f"handshake with {self._socket} failed: {what}") from None
            connection.start()
            self._connection = connection
            return connection

    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        started = time.monotonic()
        if not usernames.is_valid(username) or "\x00" in password:
            await answer_failure(started, self._floor())
            raise AuthenticationFailed
        source = login_source.get()
        try:
            connection = await self._connected()
            fields = await asyncio.wait_for(
                connection.request(
                    lambda request: auth_command(request, self._service, username, password, source)
                ),
                self._timeout,
            )
        except (_Unavailable, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, _Unavailable) else "no reply in time"
            log.warning("dovecot auth unavailable: %s", reason)
            raise TemporaryAuthFailure(reason) from None
        verdict, found = fields[0], options(fields[2:])
        if verdict == "OK":
            return await self._accepted(found, started)
        if verdict == "FAIL" and ("temp" in found or found.get("code") == "temp_fail"):
            log.warning("dovecot auth: temporary failure: %s", escape(found.get("reason", "")))
            raise TemporaryAuthFailure("dovecot: temporary failure")
        if verdict not in ("FAIL", "CONT"):
            log.warning("dovecot auth: unexpected reply %s", escape(verdict, 40))
            raise TemporaryAuthFailure("dovecot: unexpected reply")
        if "reason" in found:  # for the log only: a FAIL is a wrong password's reply
            log.info("dovecot auth: failed: %s", escape(found["reason"], 200))
        await self._failed(started)

    def _floor(self) -> float:
        # Before Dovecot has refused anyone, assume its default failure delay.
        return max(self._configured_floor, max(self._recent, default=self._assumed_delay))

    async def _failed(self, started: float) -> NoReturn:
        elapsed = time.monotonic() - started
        self._recent.append(min(elapsed, _FLOOR_CAP))
        await answer_failure(started, self._floor())
        raise AuthenticationFailed

    async def _accepted(self, found: dict[str, str], started: float) -> User:
        name = found.get("user", "")
        refused = refusal(found)
        if refused is not None:
            text = f" ({escape(refused.text)})" if refused.text else ""
            log.info("dovecot auth: user=%s refused: %s%s", escape(name, 64), refused.log, text)
            if refused.kind == "auth" and refused.text is None:
                # A wrong password's reply: after a wrong password's time, which this
                # answer (Dovecot's OK is not delayed) must not shorten for later ones.
                await answer_failure(started, self._floor())
            raise Refused(refused)
        if not usernames.is_valid(name):
            log.warning("dovecot auth: the user name Dovecot returned is not usable here")
            await self._failed(started)
        home = None
        if self._userdb_socket is not None:
            user = await self._userdb(name)
            if user is None:
                log.warning("dovecot auth: user=%s not in the userdb", escape(name, 64))
                await self._failed(started)
            home = user.home
        return User(name=name, home=home)

    async def lookup(self, username: str) -> User | None:
        """The user as Dovecot's userdb has it; without ``userdb_socket``, ``None``."""
        if self._userdb_socket is None or not usernames.is_valid(username):
            return None
        return await self._userdb(username)

    async def _userdb(self, username: str) -> User | None:
        """One ``USER`` lookup on the ``auth-userdb`` socket (a connection each: rare)."""
        assert self._userdb_socket is not None
        try:
            return await asyncio.wait_for(self._user_lookup(username), self._timeout)
        except (OSError, TimeoutError, _Unavailable) as exc:
            reason = str(exc) if isinstance(exc, _Unavailable) else _describe(exc)
            log.warning("dovecot userdb unavailable: %s", reason)
            raise TemporaryAuthFailure(reason) from None

    async def _user_lookup(self, username: str) -> User | None:
        assert self._userdb_socket is not None
        reader, writer = await asyncio.open_unix_connection(
            str(self._userdb_socket), limit=_LINE_LIMIT
        )
        try:
            writer.write(
                f"VERSION\t{_MAJOR}\t0\nUSER\t1\t{tab_escape(username)}\t"
                f"service={tab_escape(self._service)}\n".encode()
            )
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    raise _Unavailable("userdb connection closed")
                fields = parse_line(line[:-1])
                if fields[0] in ("VERSION", "SPID"):
                    continue
                if fields[0] == "NOTFOUND":
                    return None
                if fields[0] == "USER" and len(fields) >= 3:
                    name = fields[2] if usernames.is_valid(fields[2]) else username
                    return User(name=name, home=options(fields[3:]).get("home") or None)
                raise _Unavailable(f"userdb lookup failed: {escape(fields[0], 40)}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.aclose()
            self._connection = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
