"""The SQL passdb (``[auth] backend = "sql"``): the administrator's own ``password_query``.

As Dovecot's SQL passdb (doc.dovecot.org, "SQL"): one query per login, written in
Dovecot's syntax (:mod:`mailslot.auth.sqlquery` binds its variables as parameters), against
PostgreSQL or MySQL/MariaDB (:mod:`mailslot.auth.sqldb`); the row's columns are Dovecot's
passdb fields (:mod:`mailslot.auth.sqlfields`).  A hash without a ``{SCHEME}`` prefix is
read with ``default_pass_scheme``.

Every failure takes as long (RFC 3206 section 5, :mod:`mailslot.auth.verification`): an
unknown user, an invalid name, a row without a usable hash, a refused account (``nologin``,
``allow_nets``) and a wrong password each cost one verification (against a dummy hash of the
costliest scheme seen so far when there is no hash to check) and are answered no earlier
than the failure floor.  A right password refused by the row's passdb restrictions raises
:class:`~mailslot.auth.base.Refused`, applied and answered as for the passwd-file
(:mod:`mailslot.auth.restrictions`: only ``nologin``'s reply differs from a wrong
password's, as Dovecot's does), with the client and the connecting peer of the session's
:data:`~mailslot.auth.base.login_source`.  No table can be sampled here, so the dummy
starts as the process's argon2id hash and each new scheme the query returns is measured
once, when first seen.  A database that cannot answer is
:class:`~mailslot.auth.base.TemporaryAuthFailure` (``[SYS/TEMP]``, RFC 3206 section 4) and
one log line; the pool connects again at the next login.  A query that returns more than
one row is a configuration error, answered the same way (Dovecot: "password query returned
multiple matches").
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Collection

from mailslot.auth import restrictions, schemes, usernames
from mailslot.auth.base import (
    AuthenticationFailed,
    Refused,
    TemporaryAuthFailure,
    User,
    login_source,
)
from mailslot.auth.pool import VerifyPool
from mailslot.auth.restrictions import Refusal
from mailslot.auth.sqldb import Database, DatabaseUnavailable
from mailslot.auth.sqlfields import PassdbFields, canonical_name, passdb_fields
from mailslot.auth.sqlquery import Query
from mailslot.auth.verification import (
    Verifier,
    answer_failure,
    choose_dummy,
    failure_floor,
    fallback_dummy,
    measure_costs,
    verify_or_dummy,
)
from mailslot.log import escape

__all__ = ["SqlAuthenticator"]

log = logging.getLogger(__name__)


class SqlAuthenticator:
    """An :class:`~mailslot.auth.base.Authenticator` over ``password_query``."""

    uses_login_source = True  # the session sets auth.base.login_source (the client, the peer)

    def __init__(
        self,
        database: Database,
        query: Query,
        *,
        default_pass_scheme: str = "CRYPT",  # noqa: S107 (a scheme's name)
        allow_md5: bool = False,
        legacy: Collection[str] = (),
        verifier: Verifier | None = None,
        verify_pool: VerifyPool | None = None,
        failure_floor: float = 0.0,
        service: str = "pop3",
    ) -> None:
        self._database = database
        self._query = query
        self._default_scheme = default_pass_scheme
        self._allow_md5 = allow_md5
        self._legacy = tuple(legacy)  # [auth] legacy_schemes
        self._verify: Verifier = verifier or functools.partial(
            schemes.verify, allow_md5=allow_md5, legacy=self._legacy
        )
        self._verify_pool = verify_pool
        self._configured_floor = failure_floor
        self._service = service
        # The first hash of each scheme the query has returned, and what checking each costs.
        self._samples: dict[str, str] = {}
        self._costs: dict[str, float] = {}
        self._dummy: str | None = None
        self._floor = failure_floor
        self._learning: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._said: set[str] = set()  # columns already named in the log as unused

    async def _fields(self, username: str) -> PassdbFields | None:
        parameters = self._query.parameters(username, self._service)
        try:
            rows = await self._database.fetch(self._query, parameters)
        except DatabaseUnavailable as exc:
            log.warning("user database unavailable: %s", exc)
            raise TemporaryAuthFailure(str(exc)) from exc
        if len(rows) > 1:
            log.error(
                "[auth.sql] password_query returned %d rows for user=%s; it must return at"
                " most one",
                len(rows),
                usernames.for_log(username),
            )
            raise TemporaryAuthFailure("password_query returned several rows")
        if not rows:
            return None
        fields = passdb_fields(rows[0], self._default_scheme)
        for column in fields.unused:
            if column not in self._said:
                self._said.add(column)
                log.warning(
                    "[auth.sql] password_query column %s is not used by mailslot (the maildrop"
                    " comes from [store] maildir)",
                    usernames.for_log(column, 64),
                )
        return fields

    async def _learn(self, stored: str | None) -> None:
        """Make the dummy and the floor cover ``stored``'s scheme (measured once)."""
        scheme = (
            None
            if stored is None
            else schemes.identify(stored, allow_md5=self._allow_md5, legacy=self._legacy)
        )
        if self._dummy is not None and (scheme is None or scheme in self._costs):
            return
        loop = asyncio.get_running_loop()
        if self._learning is None or self._learning[0] is not loop:
            self._learning = (loop, asyncio.Lock())
        async with self._learning[1]:
            if stored is not None and scheme is not None and scheme not in self._costs:
                self._samples.setdefault(scheme, stored)
            elif self._dummy is not None:
                return
            self._dummy, self._floor = await asyncio.to_thread(self._calibrate)

    def _calibrate(self) -> tuple[str, float]:
        hashes = list(self._samples.values()) or [fallback_dummy()]
        self._costs = measure_costs(
            hashes, allow_md5=self._allow_md5, legacy=self._legacy, known=self._costs
        )
        dummy = choose_dummy(
            hashes, allow_md5=self._allow_md5, legacy=self._legacy, costs=self._costs
        )
        return dummy, failure_floor(self._costs, self._configured_floor)

    async def authenticate(
        self, username: str, password: str, *, client: str | None = None
    ) -> User:
        started = time.monotonic()
        fields = await self._fields(username) if usernames.is_valid(username) else None
        stored: str | None = None
        hashed = None if fields is None else fields.password
        if hashed is not None and schemes.identify(
            hashed, allow_md5=self._allow_md5, legacy=self._legacy
        ):
            stored = hashed
        await self._learn(stored)
        assert self._dummy is not None
        matched = await verify_or_dummy(
            self._verify, password, stored, self._dummy, pool=self._verify_pool, client=client
        )
        admitted: User | Refusal | None = None
        if matched and fields is not None:
            admitted = self._admit(username, fields, client)
        if not isinstance(admitted, User):
            await answer_failure(started, self._floor)
            if admitted is None:
                raise AuthenticationFailed
            raise Refused(admitted)
        return admitted

    def _admit(
        self, username: str, fields: PassdbFields, client: str | None
    ) -> User | Refusal | None:
        """The user a right password logs in as, else the refusal or ``None`` (and why,
        in the log)."""
        shown = usernames.for_log(username)
        source = login_source.get()
        if source is not None:
            client = None if source.remote is None else source.remote[0]
            real = source.real
        else:
            real = "unknown"  # called outside a session: no peer matches allow_real_nets
        found = fields.restrictions
        refusal = restrictions.check(found, client, real)
        if refusal is not None:
            _log_refusal(shown, refusal, found, client, real)
            return refusal
        name = canonical_name(username, fields)
        if not usernames.is_valid(name):
            log.error(
                "login refused: user=%s: the user column %s is not a valid user name",
                shown,
                usernames.for_log(name),
            )
            return None
        return User(name=name, home=fields.home)

    async def lookup(self, username: str) -> User | None:
        """The user for delivery: the query's row, without a password check."""
        if not usernames.is_valid(username):
            return None
        fields = await self._fields(username)
        if fields is None or fields.elsewhere:
            return None
        name = canonical_name(username, fields)
        return User(name=name, home=fields.home) if usernames.is_valid(name) else None

    async def aclose(self) -> None:
        await self._database.aclose()


def _log_refusal(
    shown: str,
    refusal: Refusal,
    found: restrictions.Restrictions,
    client: str | None,
    real: str | None,
) -> None:
    """The log line of a right password refused by the row's passdb fields."""
    if refusal.cause == "fields":
        unsupported = [f for f in found.refused_by if f not in restrictions.SUPPORTED]
        invalid = [f for f in found.refused_by if f in restrictions.SUPPORTED]
        if unsupported:
            log.warning(
                "login refused: user=%s: password_query returned %s, which mailslot does not"
                " support",
                shown,
                ", ".join(unsupported),
            )
        else:
            log.warning(
                "login refused: user=%s: password_query returned %s, not a list of networks",
                shown,
                ", ".join(invalid),
            )
    elif refusal.cause == "nologin":
        reason = f" ({escape(found.reason)})" if found.reason else ""
        log.info("login refused: user=%s: nologin%s", shown, reason)
    else:
        who = "client" if refusal.cause == "allow_nets" else "peer"
        address = client if refusal.cause == "allow_nets" else real
        log.info(
            "login refused: user=%s: %s %s is not in %s",
            shown,
            who,
            usernames.for_log(address or "unknown"),
            refusal.cause,
        )
