"""``mailslot doctor``: the command line of the outside check (docs/doctor.md).

The password for ``--user`` comes from a terminal prompt (getpass) or, with
``--password-stdin``, from one line of standard input; never from the command line, which other
users can read in the process list, and it is never printed.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cryptography import x509

    from mailslot.doctor.results import Check

from mailslot.doctor.net import DEFAULT_PORT, DEFAULT_STLS_PORT, DEFAULT_TIMEOUT


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port")
    return port


def _timeout(text: str) -> float:
    value = float(text)
    if not 0 < value <= 120:
        raise argparse.ArgumentTypeError("the timeout must be above 0 and at most 120 seconds")
    return value


class HostSide(Protocol):
    """``--config FILE`` read by the server's code (:mod:`mailslot.hostcheck`, handed in by
    the command line so that this package stays a client): where to look, and the checks
    of this host's side given the leaf each port served."""

    @property
    def hostname(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def stls_port(self) -> int | None: ...

    def checks(
        self, served: Mapping[int, x509.Certificate], now: datetime.datetime
    ) -> list[Check]: ...


def _no_host_side(path: Path) -> HostSide | None:
    print("mailslot doctor: --config is not available here", file=sys.stderr)
    return None


def register(
    subparsers: Any, load_host_side: Callable[[Path], HostSide | None] = _no_host_side
) -> argparse.ArgumentParser:
    """Add ``doctor`` to the ``mailslot`` command's subparsers; ``load_host_side`` reads a
    ``--config`` file."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="check a live POP3 server from outside",
        description="Check a running POP3 server (any server, not only mailslot) as the\n"
        "strictest client would: DNS, ports, certificate chain, name and expiry, TLS\n"
        "versions, cipher suites and groups, STLS, CAPA, logins before TLS, and with --user\n"
        "a real login. Each finding is ok, warning or failure, with how to fix it.\n"
        "Exit status: 0 nothing failed, 1 something failed, 2 could not check at all.",
        epilog="examples:\n"
        "  mailslot doctor pop.example.org\n"
        "  mailslot doctor 127.0.0.1 --port 1995 --stls-port 1110 --cafile mailslot-data/ca.pem\n"
        "  mailslot doctor pop.example.org --user alice --json > report.json\n"
        "  sudo mailslot doctor --config /etc/mailslot/mailslot.toml\n"
        "\n"
        "--config FILE adds what only the server's host sees: the certificate files checked\n"
        "as check-config checks them, whether the ports serve those files (a replaced file\n"
        "not yet reloaded), and with [acme] enabled the renewal loop's state. HOST then\n"
        "defaults to [server] hostname and the ports to the first implicit-TLS and STLS\n"
        "[[listener]]s.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "host",
        metavar="HOST",
        nargs="?",
        help="name or IP address of the server (with --config: default [server] hostname)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        metavar="N",
        help=f"POP3S port, implicit TLS (default {DEFAULT_PORT}, or --config's)",
    )
    parser.add_argument(
        "--stls-port",
        type=_port,
        metavar="N",
        help=f"POP3 port with STLS (default {DEFAULT_STLS_PORT}, or --config's)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="also check this host's side: certificate files, what is served, ACME state",
    )
    parser.add_argument(
        "--cafile", type=Path, metavar="FILE", help="also trust the CA certificate(s) in FILE (PEM)"
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"connect and read timeout (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--user", metavar="NAME", help="log in as NAME over TLS, STAT, QUIT")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read --user's password as one line from standard input",
    )
    parser.add_argument(
        "--no-groups",
        dest="probe_groups",
        action="store_false",
        help="skip the key-exchange group probe (it runs openssl s_client)",
    )
    parser.set_defaults(handler=main, doctor_parser=parser, load_host_side=load_host_side)
    return parser


def _password(args: argparse.Namespace) -> str | None:
    if args.user is None:
        return None
    if args.password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    return getpass.getpass(f"Password for {args.user}: ")


def main(args: argparse.Namespace) -> int:
    """Run the checks and print the report; return the exit status (0, 1 or 2)."""
    # Imported here: every `mailslot` command registers this parser, and `deliver` (run by
    # the MTA once per message) should not pay for loading cryptography's X.509 code.
    from mailslot.doctor.render import write_json, write_text
    from mailslot.doctor.runner import Options, run

    if args.host is None and args.config is None:
        args.doctor_parser.error("give HOST, or --config FILE (HOST is then [server] hostname)")
    if args.cafile is not None and not args.cafile.is_file():
        print(f"mailslot doctor: {args.cafile}: no such file", file=sys.stderr)
        return 2
    side: HostSide | None = None
    host, port, stls_port = args.host, args.port, args.stls_port
    if args.config is not None:
        side = args.load_host_side(args.config)
        if side is None:
            return 2
        host = host or side.hostname
        port = port or side.port
        stls_port = stls_port or side.stls_port
    options = Options(
        host=host,
        port=port or DEFAULT_PORT,
        stls_port=stls_port or DEFAULT_STLS_PORT,
        cafile=args.cafile,
        timeout=args.timeout,
        user=args.user,
        password=_password(args),
        probe_groups=args.probe_groups,
    )
    report = run(options)
    if side is not None:
        report.config = str(args.config)
        report.add(side.checks(report.served, options.now()))
    if args.json:
        write_json(report, sys.stdout)
    else:
        write_text(report, sys.stdout)
    sys.stdout.flush()
    return report.exit_status
