"""``mailslot acme issue|renew|status --config FILE`` (docs/cli.md, docs/acme.md).

``issue`` orders a certificate if the one at ``[tls] certificate`` is missing, self-signed,
does not cover every name or is due for renewal; ``renew`` orders one whatever the current
one is.  Both bind the challenge responder themselves, so they are for a server that is not
running its own ACME loop (or one on other ports); a running server renews by itself.
``status`` prints the state directory's ``status.json`` and the certificate's dates.
Exit status: 0 done, 1 the order failed (logged; recorded in status.json), 78 a
configuration problem.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

EX_OK = 0
EX_FAILURE = 1
EX_CONFIG = 78


def register(subparsers: Any, load: Any) -> argparse.ArgumentParser:
    """Add ``acme`` to the ``mailslot`` command; ``load(path)`` reads a configuration (the
    CLI's, which prints problems and exits 78)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "acme",
        help="issue, renew or inspect the ACME certificate",
        description="Certificates from an ACME CA (RFC 8555), as [acme] configures them.\n"
        "issue: order one if the current one is missing, self-signed, lacks a name or is\n"
        "due; renew: order one now; status: what the renewal loop last did. issue and renew\n"
        "answer the challenge themselves (port 80, 443 or DNS updates), so run them while no\n"
        "server with [acme] enabled uses those ports. Exit status: 0 done, 1 the order\n"
        "failed, 78 a configuration problem.",
        epilog="examples:\n"
        "  mailslot acme issue --config /etc/mailslot/mailslot.toml\n"
        "  mailslot acme status --config /etc/mailslot/mailslot.toml\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("issue", "renew", "status"), help="what to do")
    parser.add_argument("--config", type=Path, metavar="FILE", required=True, help="config file")
    parser.set_defaults(handler=lambda args: run(args, load(args.config, check_files=False)))
    return parser


def run(args: argparse.Namespace, config: Any) -> int:
    from mailslot import log
    from mailslot.tls.acme.schedule import CertificateInfo
    from mailslot.tls.acme.service import AcmeService, bootstrap
    from mailslot.tls.acme.state import StateDirectory

    if not config.acme.enabled:
        print(f"mailslot: {config.source}: [acme] enabled is not true", file=sys.stderr)
        return EX_CONFIG
    if args.action == "status":
        status: dict[str, Any] = StateDirectory(config.acme.state_directory).status()
        try:
            info = CertificateInfo.from_pem(config.tls.certificate.read_bytes())
            status["certificate"] = {
                "file": str(config.tls.certificate),
                "names": list(info.names),
                "not_before": info.not_before.isoformat(),
                "not_after": info.not_after.isoformat(),
                "self_signed": info.self_signed,
            }
        except (OSError, ValueError, IndexError) as exc:
            status["certificate"] = {"file": str(config.tls.certificate), "error": str(exc)}
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        print()
        return EX_OK
    log.setup(config.log.level)
    bootstrap(config)
    service = AcmeService(config)
    ok = asyncio.run(service.once(force=args.action == "renew"))
    return EX_OK if ok else EX_FAILURE
