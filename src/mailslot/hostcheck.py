"""``mailslot doctor --config FILE``: what only the server's host can see (docs/doctor.md).

Outside :mod:`mailslot.doctor`, which is a client and imports nothing of the server: the
command line hands :func:`load` to the doctor (``mailslot.cli.add_doctor``).

Besides the outside checks, the doctor then reads what the server reads:

- ``local.tls``: the ``[tls]`` and ``[[tls.certificates]]`` files, through the very checks
  ``check-config`` and ``serve`` run (:func:`mailslot.tls.certificates.check_config`);
- ``local.served``: whether the certificate each TLS port served is one of those files (a
  file replaced without a reload, e.g. by a renewal, is not what clients get);
- ``acme.*``: with ``[acme] enabled``, the renewal loop's ``status.json``, read through
  :class:`mailslot.tls.acme.state.StateDirectory` (the format lives there): the last success
  and the next renewal, a failing order, a rate limit (RFC 8555 section 6.6), an account the
  CA objects to, or a state directory this user cannot read.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mailslot.config import Config, ConfigError
from mailslot.config import load as load_config
from mailslot.doctor.results import Check, failure, ok, warning
from mailslot.tls import certificates
from mailslot.tls.acme.state import StateDirectory


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _when(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def _shown(value: object) -> str:
    when = _when(value)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if when is not None else "unknown"


def _check_config_hint(config: Config) -> str:
    return f"then mailslot check-config --config {config.source}" if config.source else ""


# -- the certificate files --------------------------------------------------------------------


def certificate_checks(config: Config, now: datetime.datetime) -> list[Check]:
    """``check-config``'s findings on the certificate files, one line each."""
    from mailslot.tls.context import key_pairs

    pairs = key_pairs(config.tls)
    if not pairs:
        return []
    findings = certificates.check_config(config, now=now)
    hint = _check_config_hint(config)
    checks: list[Check] = []
    for finding in findings:
        fix = f"as the line says ({finding.key} in {config.source})" + (f"; {hint}" if hint else "")
        if finding.severity == "error":
            checks.append(failure("local.tls", finding.message, fix, key=finding.key))
        else:
            checks.append(warning("local.tls", finding.message, fix, key=finding.key))
    if not any(f.severity == "error" for f in findings):
        files = ", ".join(str(pair.certificate) for pair in pairs)
        summary = f"the certificate files load as the server loads them: {files}"
        checks.insert(0, ok("local.tls", summary))
    return checks


def _configured_leaves(config: Config) -> dict[str, Path]:
    """Fingerprint of each configured file's first certificate -> the file."""
    from mailslot.tls.context import key_pairs

    leaves: dict[str, Path] = {}
    for pair in key_pairs(config.tls):
        try:
            loaded = x509.load_pem_x509_certificates(pair.certificate.read_bytes())
        except (OSError, ValueError):
            continue  # said by certificate_checks
        if loaded:
            leaves[fingerprint(loaded[0])] = pair.certificate
    return leaves


def served_checks(
    config: Config, served: Mapping[int, x509.Certificate], status: Mapping[str, Any]
) -> list[Check]:
    """Each port's served leaf against the configured files."""
    leaves = _configured_leaves(config)
    if not leaves:
        return []
    checks: list[Check] = []
    for port, leaf in sorted(served.items()):
        served_print = fingerprint(leaf)
        if served_print in leaves:
            checks.append(
                ok(
                    "local.served",
                    f"the server serves the certificate in {leaves[served_print]}",
                    port,
                    sha256=served_print,
                )
            )
            continue
        files = ", ".join(str(path) for path in leaves.values())
        written = ""
        if config.acme.enabled and status.get("issued"):
            written = f"; the ACME renewal wrote a new one at {_shown(status.get('issued'))}"
        else:
            times = [t for t in (_mtime(path) for path in leaves.values()) if t is not None]
            newest = max(times, default=None)
            if newest is not None:
                written = f"; the file changed at {newest}"
        checks.append(
            failure(
                "local.served",
                f"the server serves a certificate (SHA-256 {served_print[:23]}..., valid until "
                f"{leaf.not_valid_after_utc:%Y-%m-%d}) that is not in {files}{written}: the "
                "new file was not loaded",
                "reload the server (systemctl reload mailslot, or kill -HUP its main process); "
                "a reload that fails is logged with the reason; automatic reloads need [tls] "
                "reload_check_interval above 0",
                port,
                served_sha256=served_print,
                file_sha256=list(leaves),
            )
        )
    return checks


def _mtime(path: Path) -> str | None:
    try:
        stamp = os.stat(path).st_mtime
    except OSError:
        return None
    return f"{datetime.datetime.fromtimestamp(stamp, datetime.UTC):%Y-%m-%d %H:%M:%S UTC}"


# -- ACME -------------------------------------------------------------------------------------


def read_status(config: Config) -> tuple[dict[str, Any], Check | None]:
    """``status.json`` as the server wrote it, or why it could not be read."""
    directory = config.acme.state_directory
    try:
        return StateDirectory(directory).status(), None
    except PermissionError:
        return {}, warning(
            "acme.state",
            f"cannot read the ACME state directory {directory}: permission denied",
            f"run as root (sudo mailslot doctor ... --config {config.source}): the "
            "directory is 0700 and holds the account key",
        )
    except OSError as exc:
        return {}, failure(
            "acme.state",
            f"cannot read the ACME state directory {directory}: {exc.strerror or exc}",
            "check the disk and [acme] state_directory",
        )


def acme_checks(config: Config, status: Mapping[str, Any], now: datetime.datetime) -> list[Check]:
    """The renewal loop's last word, as doctor lines."""
    directory = config.acme.state_directory
    if not status:
        return [
            warning(
                "acme.status",
                f"no status in {directory}: the renewal loop has not run yet",
                "start the server with [acme] enabled (or run mailslot acme issue --config "
                f"{config.source}); its log says what the loop does",
            )
        ]
    state = status.get("state")
    renew_at = _shown(status.get("renew_at"))
    not_after = _when(status.get("not_after"))
    details: dict[str, Any] = {
        key: status[key]
        for key in ("state", "renew_at", "not_after", "issued", "checked", "next_attempt")
        if isinstance(status.get(key), str)
    }
    if state == "ok":
        last = status.get("issued") or status.get("checked")
        names = ", ".join(str(n) for n in status.get("names") or [])
        checks = [
            ok(
                "acme.status",
                f"last success {_shown(last)}: the certificate for {names} is valid until "
                f"{_shown(status.get('not_after'))}; next renewal at {renew_at}",
                **details,
            )
        ]
        due = _when(status.get("renew_at"))
        if due is not None and now - due > datetime.timedelta(days=1):
            checks.append(
                warning(
                    "acme.renewal",
                    f"the renewal was due at {renew_at} and has not happened",
                    "check that the server runs with [acme] enabled and read its log",
                    **details,
                )
            )
        return checks
    if state == "ordering":
        return [ok("acme.status", f"an order is under way: {status.get('reason', '')}", **details)]
    error = str(status.get("last_error") or "unknown error")
    retry = status.get("next_attempt")
    retry_text = f"next try at {_shown(retry)}" if retry else "no retry is scheduled"
    failures = status.get("failures")
    if isinstance(failures, int):
        details["failures"] = failures
    expiry = (
        f"; the current certificate is valid until {_shown(status.get('not_after'))}"
        if not_after is not None
        else ""
    )
    if status.get("account_problem"):
        return [
            failure(
                "acme.account",
                f"the CA objects to the ACME account: {error}; {retry_text}{expiry}",
                "read the CA's message: accept its new terms, fix [acme] email, or remove "
                f"{directory}/account.json and account.key for a new account",
                **details,
            )
        ]
    if status.get("rate_limited"):
        what = error if error.startswith("rate limited") else f"rate limited by the CA: {error}"
        summary = f"{what}; {retry_text} (its Retry-After){expiry}"
        fix = (
            "wait: mailslot retries by itself, and more orders only prolong the limit; for "
            "tests use the CA's staging directory"
        )
        soon = not_after is None or not_after - now < certificates.EXPIRY_WARNING
        make = failure if soon else warning
        return [make("acme.rate-limit", summary, fix, **details)]
    return [
        failure(
            "acme.order",
            f"the last order failed ({failures} attempt(s)): {error}; {retry_text}{expiry}",
            "fix what the CA's error names (the challenge port reachable from the internet, "
            "DNS, the names), then mailslot acme renew --config "
            f"{config.source} or wait for the retry",
            **details,
        )
    ]


@dataclass(frozen=True)
class HostSide:
    """A configuration read for the doctor: where it points, and the local checks."""

    config: Config
    hostname: str
    port: int | None
    stls_port: int | None

    def checks(self, served: Mapping[int, x509.Certificate], now: datetime.datetime) -> list[Check]:
        return checks(self.config, served, now)


def load(path: Path) -> HostSide | None:
    """``path`` read as ``serve`` reads it, or None after printing why it cannot be."""
    try:
        config = load_config(path, check_files=False)
    except ConfigError as error:
        print(f"mailslot doctor: cannot check locally:\n{error}", file=sys.stderr)
        return None
    port, stls_port = default_ports(config)
    return HostSide(config, config.server.hostname, port, stls_port)


def default_ports(config: Config) -> tuple[int | None, int | None]:
    """The first POP3 ``[[listener]]`` with implicit TLS, and the first with STLS."""
    implicit = stls = None
    for listener in config.listeners:
        if listener.protocol != "pop3" or listener.path is not None:
            continue
        if listener.tls == "implicit" and implicit is None:
            implicit = listener.port
        if listener.tls == "starttls" and stls is None:
            stls = listener.port
    return implicit, stls


def checks(
    config: Config, served: Mapping[int, x509.Certificate], now: datetime.datetime
) -> list[Check]:
    """Every local check, in report order: ACME, the files, what the ports serve."""
    found: list[Check] = []
    status: dict[str, Any] = {}
    if config.acme.enabled:
        status, problem = read_status(config)
        if problem is not None:
            found.append(problem)
        else:
            found += acme_checks(config, status, now)
    found += certificate_checks(config, now)
    found += served_checks(config, served, status)
    return found
