"""``mailslot deliver``: one message on standard input into one user's maildrop.

For Postfix's ``mailbox_command`` (local(8), "EXTERNAL COMMAND DELIVERY") and Exim's pipe
transport, in the manner of Dovecot's ``dovecot-lda``.  The outcome is a sysexits(3) status,
which both MTAs understand: 0 delivered, 67 EX_NOUSER, 75 EX_TEMPFAIL (the MTA keeps the message
and retries), 65 EX_DATAERR (empty or not a message), 77 EX_NOPERM (over quota or too big: a
bounce, like ``dovecot-lda -e``), 78 EX_CONFIG, 64 EX_USAGE, with one line on stderr, which
Postfix quotes in its bounce or defer reason.  An unexpected error exits 75, never 1: Postfix
bounces on an exit status outside sysexits, and a bug must not lose mail.

Postfix's local(8) prepends ``From sender time_stamp``, ``Return-Path``, ``X-Original-To`` and
``Delivered-To`` before piping; the ``From `` line is removed, and our own trace fields are not
added a second time when the MTA's are already at the top.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.handlers
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mailslot.auth.base import AuthError, User
from mailslot.auth.usernames import InvalidUsername, validate
from mailslot.config import Config, ConfigError, load
from mailslot.delivery import status as st
from mailslot.delivery.agent import DeliveryAgent
from mailslot.delivery.message import (
    UnsafeTraceValue,
    looks_like_message,
    split_mbox_from,
    to_lf,
    top_trace_fields,
)
from mailslot.delivery.recipient import RecipientRejected
from mailslot.store.base import Store

DEFAULT_CONFIG = Path("/etc/mailslot/mailslot.toml")
# Room for the mbox From line and the MTA's trace fields on top of max_message_size.
_READ_SLACK = 64 * 1024


class DeliverError(Exception):
    """A failure reported as one line on stderr with a sysexits status."""

    @classmethod
    def of(cls, status: st.Status) -> DeliverError:
        return cls(status.text, status.sysexit, status.enhanced)

    def __init__(self, message: str, code: int, enhanced: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.enhanced = enhanced

    def line(self) -> str:
        """The stderr line.  Postfix takes an RFC 3463 code at the start of a command's output
        as the DSN status (pipe_command), so a known code comes first."""
        prefix = f"{self.enhanced} " if self.enhanced else ""
        return f"{prefix}mailslot deliver: {self}"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``deliver`` on the ``mailslot`` command's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "deliver",
        help="deliver one message from stdin (for an MTA)",
        description="Deliver one message read from standard input into a user's maildrop,\n"
        "for Postfix's mailbox_command or Exim's pipe transport. Exit status per\n"
        "sysexits(3): 0 delivered, 67 unknown user, 75 try again later, 65 not a message,\n"
        "77 over quota or too big, 78 configuration error (docs/delivery.md).",
        epilog="examples:\n"
        '  mailbox_command = /usr/local/bin/mailslot deliver -a "$RECIPIENT"\n'
        "  mailslot deliver --config /etc/mailslot/mailslot.toml -u alice -f bob@example.org"
        " < msg\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=DEFAULT_CONFIG,
        help=f"configuration file (default: {DEFAULT_CONFIG})",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("-u", "--user", metavar="USER", help="deliver to this user name")
    who.add_argument(
        "-a",
        "--address",
        metavar="ADDRESS",
        help="deliver to the user this address maps to ([delivery] recipient)",
    )
    parser.add_argument(
        "-f",
        "--sender",
        metavar="SENDER",
        help="envelope sender for Return-Path (default: from an mbox 'From ' line; "
        "'' is the null sender)",
    )
    parser.set_defaults(handler=run)
    return parser


def register(subparsers: Any) -> None:
    """The hook :func:`mailslot.cli.add_deliver` calls."""
    add_parser(subparsers)


def run(args: argparse.Namespace, stdin: BinaryIO | None = None) -> int:
    """Deliver the message on ``stdin``; print a reason on stderr unless delivered."""
    source = stdin if stdin is not None else sys.stdin.buffer
    try:
        with _logs_to_syslog():
            return asyncio.run(_deliver(args, source))
    except DeliverError as error:
        print(error.line(), file=sys.stderr)
        return error.code
    except Exception as exc:
        # Never exit 1: Postfix bounces on a non-sysexits status, and a bug must not lose mail.
        print(f"mailslot deliver: internal error ({type(exc).__name__})", file=sys.stderr)
        return st.EX_TEMPFAIL


@contextlib.contextmanager
def _logs_to_syslog() -> Iterator[None]:
    """Send mailslot's log lines to syslog (mail facility), as dovecot-lda does.

    The MTA quotes our stderr in bounces and defer reasons, so stderr carries only the one-line
    reason; warnings (a plaintext passwd-file, a deferred delivery) go to the mail log.
    """
    logger = logging.getLogger("mailslot")
    handler: logging.Handler
    if os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(
            "/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter("mailslot-deliver[%(process)d]: %(message)s"))
    else:
        handler = logging.NullHandler()
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved
        handler.close()


def _load_config(path: Path) -> Config:
    try:
        # Certificates and keys are the POP3 server's business, and usually unreadable by
        # the recipient user the MTA runs us as.
        return load(path, check_files=False)
    except ConfigError as error:
        first = error.problems[0].format(error.source) if error.problems else str(path)
        raise DeliverError(f"configuration error: {first}", st.EX_CONFIG) from None


def _read_message(source: BinaryIO, max_size: int) -> bytes:
    try:
        if max_size > 0:
            return source.read(max_size + _READ_SLACK + 1)
        return source.read()
    except OSError as exc:
        raise DeliverError(f"cannot read the message: {exc.strerror}", st.EX_TEMPFAIL) from None


def _drop_privileges(path: Path, config: Config) -> None:
    """Run as root (by hand, or an MTA's pipe with user = root), become ``[server] user``
    before the passwd-file or a Maildir is touched: a message written by root is a root-owned
    file in a maildrop the server, running as that user, could not expunge.  Root without a
    user is refused as ``serve`` refuses it (78: the MTA keeps the message and retries).
    Postfix runs ``mailbox_command`` as the recipient, never root: then nothing changes."""
    if os.geteuid() != 0:
        return
    from mailslot import privileges

    try:
        privileges.drop(privileges.target(config.server))
    except privileges.PrivilegeError as exc:
        raise DeliverError(f"configuration error: {path}: {exc.key}: {exc}", st.EX_CONFIG) from None


async def _deliver(args: argparse.Namespace, source: BinaryIO) -> int:
    config = _load_config(args.config)
    _drop_privileges(args.config, config)
    if config.auth.backend == "passwd-file" and config.auth.passwd_file is None:
        raise DeliverError(f"{args.config}: [auth] passwd_file is not set", st.EX_CONFIG)
    # Imported here so that a broken backend is reported as one line, not an import traceback.
    from mailslot.auth import backends as auth_backends
    from mailslot.auth.sqlcheck import SqlDsnMissing
    from mailslot.store import backends
    from mailslot.store.maildir import MaildirStore

    store: Store = MaildirStore(config.store.maildir)
    try:
        if config.store.backend == "postgresql":
            store = backends.postgres_store(config)
        users = auth_backends.build(config, store)
    except (backends.DsnMissing, SqlDsnMissing) as exc:
        raise DeliverError(f"configuration error: {exc}", st.EX_CONFIG) from None
    try:
        return await _deliver_into(args, source, config, store, users)
    finally:
        for owner in (users, store):  # a database pool, closed once
            close = getattr(owner, "aclose", None)
            if close is not None:
                await close()


async def _deliver_into(
    args: argparse.Namespace, source: BinaryIO, config: Config, store: Store, users: Any
) -> int:
    agent = DeliveryAgent(config.delivery, store, users)

    raw = _read_message(source, config.delivery.max_message_size)
    data, from_line_sender = split_mbox_from(raw)
    body = to_lf(data)
    if not body.strip():
        raise DeliverError("empty message on standard input", st.EX_DATAERR, "5.6.0")
    if not looks_like_message(body):
        raise DeliverError(
            "standard input does not start with a header field", st.EX_DATAERR, "5.6.0"
        )
    if agent.too_big(len(body)):
        raise DeliverError.of(st.TOO_BIG)

    user = await _user(args, agent, users)
    sender: str | None = args.sender if args.sender is not None else from_line_sender
    recipient: str | None = args.address
    present = top_trace_fields(body)
    if b"return-path" in present:
        sender = None
    if recipient is not None and _delivered_to(present, recipient):
        recipient = None
    try:
        outcome = await agent.deliver(user, body, sender=sender, recipient=recipient)
    except UnsafeTraceValue as exc:
        raise DeliverError(str(exc), st.EX_USAGE) from None
    if not outcome.ok:
        raise DeliverError.of(outcome)
    return st.EX_OK


async def _user(args: argparse.Namespace, agent: DeliveryAgent, users: Any) -> User:
    if args.address is not None:
        try:
            return await agent.resolve(args.address)
        except RecipientRejected as rejected:
            raise DeliverError.of(rejected.status) from None
    try:
        name = validate(args.user)
        found: User | None = await users.lookup(name)
    except InvalidUsername:
        found = None
    except AuthError as exc:
        raise DeliverError(f"user database: {exc}", st.EX_TEMPFAIL, "4.3.0") from None
    if found is None:
        raise DeliverError.of(st.NO_SUCH_USER)
    return found


def _delivered_to(present: dict[bytes, list[bytes]], recipient: str) -> bool:
    wanted = recipient.encode("utf-8", "surrogateescape").lower()
    return any(value.strip(b"<>").lower() == wanted for value in present.get(b"delivered-to", []))
