"""``mailslot migrate --from-config OLD --to-config NEW``: Maildirs into PostgreSQL.

OLD is the configuration the server runs today (``[store] backend = "maildir"``, users in a
passwd-file), NEW the one it will run (``[store] backend = "postgresql"``).  Every user of
OLD's passwd-file (or each ``--user``) is moved by :mod:`mailslot.migration.copy`, and with
``[auth] backend = "postgresql"`` in NEW, its passwd-file line (name, stored hash, home) into
``mailslot_users``.  ``--verify`` changes nothing and compares (:mod:`.verify`).
``--hold`` only copies the users and holds every account (deliveries deferred, logins
``[IN-USE]``): the first step of the cut-over in docs/postgresql.md.

Exit status (sysexits(3) where one fits): 0 done (``--verify``: identical), 1 ``--verify``
found differences, 75 some accounts were skipped (in use: run again), 69 the database cannot be
reached, 78 a configuration problem; 130 after Ctrl-C (run again to go on).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from mailslot.auth import usernames
from mailslot.auth.passwdfile import Entry
from mailslot.config import Config, ConfigError, load
from mailslot.migration.copy import Batches, Migrator, Skipped, listing_totals
from mailslot.migration.progress import Progress
from mailslot.migration.source import SourceError, passwd_entries
from mailslot.migration.verify import verify_user
from mailslot.store import backends
from mailslot.store.base import Store, TemporaryFailure
from mailslot.store.postgresql import PostgresStore

EX_OK = 0
EX_DIFFERENT = 1
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78
VERIFY_NODE = "mailslot-verify"


class Refused(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def register(subparsers: Any) -> None:
    """The hook :mod:`mailslot.cli` calls."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "migrate",
        help="move Maildirs and a passwd-file into the PostgreSQL store",
        description="Copy every user's Maildir (same order, UIDLs and sizes: no client\n"
        "downloads anything again) and passwd-file line from the --from-config\n"
        "configuration into the PostgreSQL database of --to-config. Resumable: run it\n"
        "again after a crash or Ctrl-C and it goes on, copying nothing twice. An account\n"
        "being copied defers its deliveries (LMTP 451, deliver exit 75). --verify compares\n"
        "STAT, LIST, UIDL and every message's bytes and changes nothing. Exit status: 0\n"
        "done or identical, 1 differences, 75 accounts in use (run again), 69 database\n"
        "unreachable, 78 configuration problem (docs/postgresql.md).",
        epilog="examples:\n"
        "  mailslot migrate --from-config /etc/mailslot/old.toml --to-config "
        "/etc/mailslot/mailslot.toml\n"
        "  mailslot migrate --from-config old.toml --to-config new.toml --verify\n"
        "  mailslot migrate --from-config old.toml --to-config new.toml --user alice\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from-config", type=Path, metavar="OLD", required=True, help="the Maildir configuration"
    )
    parser.add_argument(
        "--to-config", type=Path, metavar="NEW", required=True, help="the PostgreSQL configuration"
    )
    parser.add_argument(
        "--user", action="append", metavar="NAME", help="only this user (repeatable)"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--verify", action="store_true", help="compare only; change nothing")
    what.add_argument(
        "--hold",
        action="store_true",
        help="only hold every account (defer deliveries) and exit; a later run copies",
    )
    parser.add_argument(
        "--batch", type=int, default=500, metavar="N", help="messages per transaction (500)"
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (10)",
    )
    parser.set_defaults(handler=run)


def _load(path: Path) -> Config:
    try:
        return load(path, check_files=False)
    except ConfigError as error:
        raise Refused(str(error), EX_CONFIG) from None


def _users(old: Config, names: list[str] | None) -> list[Entry]:
    try:
        entries = passwd_entries(old)
    except SourceError as exc:
        if not names:
            raise Refused(str(exc), EX_CONFIG) from None
        entries = []
    if not names:
        return entries
    known = {entry.name: entry for entry in entries}
    chosen = []
    for name in names:
        if not usernames.is_valid(name):
            raise Refused(f"--user {usernames.for_log(name)}: not a valid user name", EX_CONFIG)
        chosen.append(known.get(name, Entry(name=name, password="", home=None)))
    return chosen


def run(args: argparse.Namespace) -> int:
    try:
        old, new = _load(args.from_config), _load(args.to_config)
        if old.store.backend != "maildir":
            raise Refused(f'{args.from_config}: [store] backend is not "maildir"', EX_CONFIG)
        if new.store.backend != "postgresql":
            raise Refused(f'{args.to_config}: [store] backend is not "postgresql"', EX_CONFIG)
        if args.batch < 1:
            raise Refused("--batch must be at least 1", EX_CONFIG)
        entries = _users(old, args.user)
        try:
            dsn = backends.resolve_dsn(new.store)
        except backends.DsnMissing as exc:
            raise Refused(str(exc), EX_CONFIG) from None
        maildirs = backends.build(old)
        database = PostgresStore(dsn, pool_size=2, node=VERIFY_NODE, statement_cache_size=0)
        users = new.auth.backend == "postgresql"
        job = _verify if args.verify else _hold if args.hold else _migrate
        return asyncio.run(job(args, entries, maildirs, database, users))
    except Refused as exc:
        print(f"mailslot: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(
            "\nmailslot: interrupted; what was committed stays, run the same command again to"
            " go on (deliveries to a held account stay deferred until then)",
            file=sys.stderr,
        )
        return 130


async def _reachable(database: PostgresStore) -> None:
    try:
        async with database.connection() as connection:
            await connection.fetchval("SELECT 1")
    except TemporaryFailure as exc:
        raise Refused(f"cannot use the database: {exc}", EX_UNAVAILABLE) from None


async def _migrate(
    args: argparse.Namespace,
    entries: list[Entry],
    maildirs: Store,
    database: PostgresStore,
    users: bool,
) -> int:
    try:
        await _reachable(database)
        totals = [await listing_totals(maildirs, e.name, e.home) for e in entries]
        progress = Progress(
            sum(t[0] for t in totals),
            sum(t[1] for t in totals),
            sys.stderr,
            interval=args.progress_interval,
        )
        migrator = Migrator(maildirs, database, progress, Batches(messages=args.batch))
        skipped = copied = 0
        for entry in entries:
            shown = usernames.for_log(entry.name)
            try:
                if users and entry.password:
                    warning = await migrator.copy_user_row(entry.name, entry.password, entry.home)
                    if warning:
                        progress.note(f"{shown}: {warning}")
                outcome = await migrator.migrate(entry.name, entry.home)
            except Skipped as exc:
                skipped += 1
                progress.note(f"{shown}: skipped: {exc}; run again later")
                continue
            except TemporaryFailure as exc:
                skipped += 1
                progress.note(f"{shown}: skipped: database: {exc}; run again later")
                continue
            copied += outcome.copied
            if outcome.removed:
                progress.note(
                    f"{shown}: {outcome.removed} messages copied earlier and since removed from"
                    " the Maildir were removed"
                )
        progress.finish()
        print(
            f"{len(entries) - skipped} of {len(entries)} accounts migrated, {copied} messages"
            f" copied, {progress.messages - copied} already there",
            file=sys.stderr,
        )
        return EX_TEMPFAIL if skipped else EX_OK
    finally:
        await database.aclose()


async def _hold(
    args: argparse.Namespace,
    entries: list[Entry],
    maildirs: Store,
    database: PostgresStore,
    users: bool,
) -> int:
    try:
        await _reachable(database)
        migrator = Migrator(maildirs, database, Progress(0, 0, sys.stderr))
        busy = 0
        for entry in entries:
            try:
                # The user first, so that a delivery finds the recipient and is deferred.
                if users and entry.password:
                    warning = await migrator.copy_user_row(entry.name, entry.password, entry.home)
                    if warning:
                        print(
                            f"mailslot: {usernames.for_log(entry.name)}: {warning}", file=sys.stderr
                        )
                await migrator.hold(entry.name)
            except Skipped as exc:
                busy += 1
                print(f"mailslot: {usernames.for_log(entry.name)}: {exc}", file=sys.stderr)
        print(f"{len(entries) - busy} of {len(entries)} accounts held", file=sys.stderr)
        return EX_TEMPFAIL if busy else EX_OK
    finally:
        await database.aclose()


async def _verify(
    args: argparse.Namespace,
    entries: list[Entry],
    maildirs: Store,
    database: PostgresStore,
    users: bool,
) -> int:
    try:
        await _reachable(database)
        different = 0
        for entry in entries:
            shown = usernames.for_log(entry.name)
            password = entry.password if users and entry.password else None
            try:
                problems = await verify_user(entry.name, entry.home, maildirs, database, password)
            except TemporaryFailure as exc:
                problems = [f"not compared: database: {exc}"]
            if problems:
                different += 1
                for problem in problems:
                    print(f"{shown}: {problem}")
            else:
                print(f"{shown}: identical")
        print(
            f"{len(entries) - different} of {len(entries)} accounts identical",
            file=sys.stderr,
        )
        return EX_DIFFERENT if different else EX_OK
    finally:
        await database.aclose()
