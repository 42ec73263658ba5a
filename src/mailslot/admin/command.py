"""``mailslot who``, ``kick``, ``mailbox status``, ``reload`` and ``stop`` (docs/cli.md).

Each finds the admin socket from ``--config`` (``[admin] socket``; without it
``/run/mailslot/admin.sock``) or ``--socket``, sends one request and prints the answer, as a
table or with ``--json`` as the server's result object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mailslot.admin.client import Denied, NotRunning, call
from mailslot.admin.protocol import AdminProtocolError, Request
from mailslot.admin.sockets import DEFAULT_SOCKET

EX_OK = 0
EX_NOTHING = 1  # kick: no session matched
EX_USAGE = 64
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_NOPERM = 77
EX_CONFIG = 78

_STATUS = {
    "usage": EX_USAGE,
    "nouser": EX_NOUSER,
    "unavailable": EX_UNAVAILABLE,
    "denied": EX_NOPERM,
    "internal": EX_SOFTWARE,
}

_EXIT = """
exit status: 0 done; 1 kick found no session; 64 bad request; 67 no such user;
69 the server is not running (no socket, or nobody answers on it); 70 the server failed;
77 permission denied; 78 the configuration file is invalid.
"""


def register(subparsers: Any) -> None:
    """Add the admin commands to the ``mailslot`` command's subparsers."""
    who = _parser(
        subparsers,
        "who",
        "list the logged-in POP3 sessions of every worker",
        "List every logged-in session of the running server, on every worker: user, client\n"
        "address, listener, TLS version, login time, messages retrieved and marked deleted.",
        "  mailslot who --config /etc/mailslot/mailslot.toml\n"
        "  mailslot who --config mailslot-data/mailslot.toml --json\n",
    )
    who.set_defaults(handler=_who)

    kick = _parser(
        subparsers,
        "kick",
        "end sessions of a user or from an address",
        "End the sessions of USER, or from --address ADDR, on every worker. The client gets\n"
        "-ERR [SYS/TEMP] before the close, and nothing it marked with DELE is deleted (a\n"
        "kicked session is not a QUIT, RFC 1939 section 6).",
        "  mailslot kick --config /etc/mailslot/mailslot.toml alice\n"
        "  mailslot kick --config /etc/mailslot/mailslot.toml --address 192.0.2.7\n",
    )
    target = kick.add_mutually_exclusive_group(required=True)
    target.add_argument("user", nargs="?", metavar="USER", help="the user whose sessions end")
    target.add_argument("--address", metavar="ADDR", help="end every session from this IP")
    kick.set_defaults(handler=_kick)

    mailbox = _parser(
        subparsers,
        "mailbox",
        "look at a user's maildrop",
        "Look at a user's maildrop without locking it.",
        "  mailslot mailbox status --config /etc/mailslot/mailslot.toml alice\n",
        options=False,
    )
    actions = mailbox.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = _parser(
        actions,
        "status",
        "messages, size, oldest message, and who holds the lock",
        "Show USER's messages, their size on disk, the oldest message's date and whether the\n"
        "maildrop is locked, by which session, worker and node.",
        "  mailslot mailbox status --config /etc/mailslot/mailslot.toml alice --json\n",
    )
    status.add_argument("user", metavar="USER")
    status.set_defaults(handler=_mailbox_status)

    reload = _parser(
        subparsers,
        "reload",
        "reload the TLS certificates and keys (as SIGHUP)",
        "Ask the running server to reload its certificates and keys, as SIGHUP does.",
        "  mailslot reload --config /etc/mailslot/mailslot.toml\n",
    )
    reload.set_defaults(handler=_reload)
    stop = _parser(
        subparsers,
        "stop",
        "stop the server gracefully (as SIGTERM)",
        "Ask the running server to stop as SIGTERM does: no new connections, open sessions\n"
        "get [server] shutdown_timeout seconds to end.",
        "  mailslot stop --config /etc/mailslot/mailslot.toml\n",
    )
    stop.set_defaults(handler=_stop)


def _parser(
    subparsers: Any,
    name: str,
    summary: str,
    description: str,
    examples: str,
    *,
    options: bool = True,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + examples + _EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if options:
        where = parser.add_mutually_exclusive_group()
        where.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="the server's configuration ([admin] socket)",
        )
        where.add_argument(
            "--socket",
            type=Path,
            metavar="PATH",
            help=f"the admin socket (default {DEFAULT_SOCKET})",
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


class _Failed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def socket_path(args: argparse.Namespace) -> Path:
    """The admin socket: ``--socket``, ``--config``'s ``[admin] socket``, or the default."""
    if args.socket is not None:
        return Path(args.socket)
    if args.config is None:
        return DEFAULT_SOCKET
    from mailslot.config import ConfigError, load

    try:
        config = load(args.config, check_files=False)
    except ConfigError as exc:
        raise _Failed(str(exc), EX_CONFIG) from None
    return config.admin.socket or DEFAULT_SOCKET


def _request(args: argparse.Namespace, request: Request) -> dict[str, Any]:
    path = socket_path(args)
    try:
        response = call(path, request)
    except NotRunning as exc:
        raise _Failed(str(exc), EX_UNAVAILABLE) from None
    except Denied as exc:
        raise _Failed(str(exc), EX_NOPERM) from None
    except AdminProtocolError as exc:
        raise _Failed(f"the server's answer is not understood: {exc}", EX_SOFTWARE) from None
    if not response.ok:
        raise _Failed(response.error, _STATUS[response.code])
    unreachable = response.result.get("unreachable") or []
    if unreachable:
        pids = ", ".join(str(p) for p in unreachable)
        print(f"mailslot: warning: workers that did not answer: pid {pids}", file=sys.stderr)
    return response.result


def _make(command: str, **fields: str | None) -> Request:
    try:
        return Request(command, **fields)  # type: ignore[arg-type]
    except AdminProtocolError as exc:
        raise _Failed(str(exc), EX_USAGE) from None


def _guard(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = handler(args)
            return code
        except _Failed as exc:
            print(f"mailslot: {exc}", file=sys.stderr)
            return exc.code

    return run


def _dump(result: dict[str, Any]) -> None:
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


@_guard
def _who(args: argparse.Namespace) -> int:
    result = _request(args, _make("who"))
    if args.json:
        _dump(result)
        return EX_OK
    sessions = sorted(result["sessions"], key=lambda s: (s["user"], s["since"]))
    print(format_sessions(sessions))
    return EX_OK


def format_sessions(sessions: list[dict[str, Any]]) -> str:
    """``who``'s table: a header and a line per session."""
    header = ("USER", "CLIENT", "LISTENER", "TLS", "SINCE", "RETR", "DELE", "WORKER")
    rows = [header] + [
        (
            str(s.get("user")),
            str(s.get("client")),
            str(s.get("listener")),
            str(s.get("tls") or "none"),
            str(s.get("since")),
            str(s.get("retrieved")),
            str(s.get("deleted")),
            f"{s['worker']['index']} (pid {s['worker']['pid']})",
        )
        for s in sessions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@_guard
def _kick(args: argparse.Namespace) -> int:
    request = _make("kick", user=args.user, address=args.address)
    result = _request(args, request)
    if args.json:
        _dump(result)
    else:
        count = result["kicked"]
        print(f"kicked {count} session{'' if count == 1 else 's'}")
    return EX_OK if result["kicked"] else EX_NOTHING


@_guard
def _mailbox_status(args: argparse.Namespace) -> int:
    result = _request(args, _make("mailbox-status", user=args.user))
    if args.json:
        _dump(result)
        return EX_OK
    print(f"user:      {result['user']}")
    print(f"messages:  {result['messages']}")
    print(f"octets:    {result['octets']}")
    print(f"oldest:    {result['oldest'] or '-'}")
    holders = result.get("locked_by") or []
    if holders:
        for session in holders:
            worker = session["worker"]
            print(
                f"locked:    by session {session['session']} from {session['client']}, worker "
                f"{worker['index']} (pid {worker['pid']}) on {worker['node']}"
            )
    elif result.get("lock_pids"):
        pids = ", ".join(str(p) for p in result["lock_pids"])
        print(f"locked:    by pid {pids} (no session of this server)")
    else:
        print("locked:    no")
    return EX_OK


@_guard
def _reload(args: argparse.Namespace) -> int:
    return _control(args, "reload", "reloading")


@_guard
def _stop(args: argparse.Namespace) -> int:
    return _control(args, "stop", "stopping")


def _control(args: argparse.Namespace, command: str, said: str) -> int:
    result = _request(args, _make(command))
    if args.json:
        _dump(result)
    else:
        print(said)
    return EX_OK
