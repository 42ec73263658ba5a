"""The order of the doctor's checks, from DNS to a real login.

DNS first; then a TCP connection to each port; then, per reachable port, the POP3 conversation
(greeting, CAPA, STLS on the plaintext port) and the TLS checks over implicit TLS (RFC 8314
section 3.3) or STLS (RFC 2595 section 4): certificate, versions, suites, groups.  When the
name does not resolve, or neither port accepts a connection, nothing can be checked and the
report says so (exit status 2).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mailslot.doctor import certificate, groups, pop3
from mailslot.doctor.dns import ip_literal, resolve
from mailslot.doctor.net import (
    DEFAULT_PORT,
    DEFAULT_STLS_PORT,
    DEFAULT_TIMEOUT,
    Pop3Error,
    connect,
    open_session,
)
from mailslot.doctor.results import Check, Report, failure, ok, warning
from mailslot.doctor.tls import (
    Endpoint,
    Handshake,
    check_suites,
    check_versions,
    peer_chain,
    probe_context,
)

_MAX_CERT_FILE = 1 << 20  # a certificate directory entry larger than this is not a certificate


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Options:
    """What to check; ``password`` is used only for the login and never shown."""

    host: str
    port: int = DEFAULT_PORT
    stls_port: int = DEFAULT_STLS_PORT
    cafile: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    user: str | None = None
    password: str | None = None
    probe_groups: bool = True
    now: Callable[[], datetime.datetime] = _utcnow


def verify_context(cafile: Path | None) -> ssl.SSLContext:
    """The system trust store, plus ``cafile``; names are checked separately (cert.name)."""
    context = ssl.create_default_context()
    if cafile is not None:
        context.load_verify_locations(cafile=str(cafile))
    context.check_hostname = False
    return context


def _trust_label(cafile: Path | None) -> str:
    return "the system trust store" + (f" and {cafile}" if cafile is not None else "")


@functools.cache
def _roots(cafile: Path | None) -> tuple[x509.Certificate, ...]:
    """The trusted certificates, parsed: the system store's file and directory, and ``cafile``.

    ``SSLContext.get_ca_certs()`` lists only what was loaded from a file; OpenSSL reads a
    hashed directory (capath) lazily, so a system whose store is only a directory would look
    empty and every complete chain would seem to lack its root.  The directory is read here.
    """
    context = verify_context(cafile)
    blobs = [bytes(der) for der in context.get_ca_certs(binary_form=True)]
    directory = ssl.get_default_verify_paths().capath
    if directory and os.path.isdir(directory):
        for entry in sorted(os.listdir(directory)):
            path = os.path.join(directory, entry)
            with contextlib.suppress(OSError):
                if os.path.isfile(path) and os.path.getsize(path) < _MAX_CERT_FILE:
                    with open(path, "rb") as handle:
                        blobs.append(handle.read())
    roots: dict[bytes, x509.Certificate] = {}
    with warnings.catch_warnings():
        # Some system roots predate RFC 5280's positive serial numbers; cryptography warns.
        warnings.simplefilter("ignore")
        for blob in blobs:
            with contextlib.suppress(ValueError):
                loaded = (
                    x509.load_pem_x509_certificates(blob)
                    if blob.lstrip().startswith(b"-----")
                    else [x509.load_der_x509_certificate(blob)]
                )
                for cert in loaded:
                    roots.setdefault(cert.fingerprint(hashes.SHA256()), cert)
    return tuple(roots.values())


def _connect_check(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` accepts a TCP connection, else why not."""
    try:
        connect(host, port, timeout).close()
    except OSError as exc:
        return str(exc) or type(exc).__name__
    return None


def _reachability(options: Options, host: str, report: Report) -> tuple[bool, bool]:
    implicit_error = _connect_check(host, options.port, options.timeout)
    plain_error = _connect_check(host, options.stls_port, options.timeout)
    if implicit_error is None:
        report.add(ok("connect", f"port {options.port} accepts connections", options.port))
    elif plain_error is None:
        report.add(
            warning(
                "connect",
                f"port {options.port} (POP3S) does not answer: {implicit_error}",
                "open POP3S: RFC 8314 section 3.3 prefers implicit TLS over STLS",
                options.port,
            )
        )
    if plain_error is None:
        report.add(
            ok("connect", f"port {options.stls_port} accepts connections", options.stls_port)
        )
    elif implicit_error is None:
        report.add(
            ok(
                "connect",
                f"port {options.stls_port} is closed: fine, POP3S alone is what RFC 8314 asks",
                options.stls_port,
            )
        )
    if implicit_error is not None and plain_error is not None:
        report.add(
            failure(
                "connect",
                f"nothing answers on {host} port {options.port} ({implicit_error}) nor port "
                f"{options.stls_port} ({plain_error})",
                "check that the server runs, listens on these ports, and that no firewall "
                "drops the connections",
            )
        )
        report.unreachable = "no port answers"
    return implicit_error is None, plain_error is None


@dataclass
class _TlsSession:
    handshake: Handshake
    greeting: str
    seconds: float
    caps: pop3.Capabilities | None


def _tls_session(endpoint: Endpoint) -> _TlsSession:
    """One session over TLS with a non-verifying context: chain, greeting time, CAPA."""
    opened = open_session(
        endpoint.host,
        endpoint.port,
        endpoint.timeout,
        context=probe_context(),
        stls=endpoint.stls,
    )
    channel = opened.channel
    try:
        sock = channel.sock
        assert isinstance(sock, ssl.SSLSocket)
        cipher = sock.cipher()
        shake = Handshake(sock.version() or "?", cipher[0] if cipher else "?", peer_chain(sock))
        caps = None
        with contextlib.suppress(Pop3Error, OSError):
            caps = pop3.read_capa(channel)
            channel.command("QUIT")
        return _TlsSession(shake, opened.greeting, opened.greeting_seconds, caps)
    finally:
        channel.close()


def _verify(endpoint: Endpoint, cafile: Path | None) -> certificate.Verification:
    context = verify_context(cafile)
    label = _trust_label(cafile)
    try:
        opened = open_session(
            endpoint.host, endpoint.port, endpoint.timeout, context=context, stls=endpoint.stls
        )
    except ssl.SSLCertVerificationError as exc:
        return certificate.Verification(exc.verify_code, exc.verify_message or str(exc), label)
    except (OSError, Pop3Error) as exc:
        return certificate.Verification(-1, f"the verifying handshake failed: {exc}", label)
    with contextlib.suppress(OSError, Pop3Error):
        opened.channel.command("QUIT")
    opened.channel.close()
    return certificate.Verification(0, "ok", label)


def _tls_checks(
    options: Options, endpoint: Endpoint, report: Report, *, greeting: bool
) -> tuple[list[Check], bool]:
    """Every TLS and certificate check over one endpoint; True if TLS worked.  The served
    leaf is kept in ``report.served``."""
    port = endpoint.port
    try:
        session = _tls_session(endpoint)
    except (OSError, Pop3Error) as exc:
        what = "STLS" if endpoint.stls else "the TLS handshake"
        fix = "check the server's TLS configuration and log"
        if isinstance(exc, ssl.SSLError) and exc.reason == "WRONG_VERSION_NUMBER":
            # The answer was not TLS at all: typically plaintext POP3 on the POP3S port.
            fix = "this port does not speak TLS: serve implicit TLS here (RFC 8314 section 3.3)"
        return [failure("tls.handshake", f"{what} failed: {exc}", fix, port)], False
    shake = session.handshake
    checks = [
        ok(
            "tls.handshake",
            f"{shake.version} with {shake.cipher}",
            port,
            version=shake.version,
            cipher=shake.cipher,
        )
    ]
    if greeting:
        checks.append(pop3.check_greeting(session.greeting, session.seconds, port))
        if session.caps is not None:
            checks.append(pop3.check_capa(session.caps, port))
            checks.append(pop3.check_implementation(session.caps, port))
    if shake.chain:
        verification = _verify(endpoint, options.cafile)
        leaf = shake.chain[0]
        report.served[port] = leaf
        checks += [
            certificate.check_chain(shake.chain, verification, port),
            certificate.check_intermediates(
                shake.chain, _roots(options.cafile), verification, port
            ),
            certificate.check_name(leaf, endpoint.host, _is_ip(endpoint.host), port),
            certificate.check_expiry(leaf, options.now(), port),
            certificate.check_key(leaf, port),
        ]
    else:
        checks.append(failure("cert.chain", "the server sent no certificate", "serve one", port))
    version_checks = check_versions(endpoint)
    checks += version_checks
    offered = next((c.details.get("offered") for c in version_checks if c.id == "tls.modern"), [])
    offered = offered if isinstance(offered, list) else []
    checks.append(check_suites(endpoint, "1.2" in offered))
    if options.probe_groups and offered:
        curve = certificate.openssl_curve(shake.chain[0]) if shake.chain else None
        checks.append(groups.check_groups(endpoint, "1.3" in offered, curve))
    return checks, True


def _is_ip(host: str) -> bool:
    return ip_literal(host) is not None


def _plain_checks(options: Options, host: str) -> tuple[list[Check], bool]:
    """Port 110 before TLS: greeting, CAPA, STLS offered, no cleartext logins."""
    port = options.stls_port
    try:
        opened = open_session(host, port, options.timeout, context=None)
    except (OSError, Pop3Error) as exc:
        return [
            failure(
                "pop3.greeting",
                f"no POP3 greeting: {exc}",
                "check that a POP3 server listens on this port",
                port,
            )
        ], False
    channel = opened.channel
    checks = [pop3.check_greeting(opened.greeting, opened.greeting_seconds, port)]
    try:
        caps = pop3.read_capa(channel)
        with contextlib.suppress(OSError, Pop3Error):
            channel.command("QUIT")
    except (OSError, Pop3Error) as exc:
        checks.append(
            failure(
                "pop3.capa",
                f"CAPA broke the session: {exc}",
                "fix the server's CAPA reply (RFC 2449)",
                port,
            )
        )
        return checks, False
    finally:
        channel.close()
    checks += [
        pop3.check_capa(caps, port),
        pop3.check_implementation(caps, port),
        pop3.check_stls_offered(caps, port),
        pop3.check_cleartext_auth(caps, port),
    ]
    return checks, caps.has("STLS")


def run(options: Options) -> Report:
    """Run every check against ``options.host``; see docs/doctor.md."""
    report = Report(options.host, options.port, options.stls_port)
    resolved = resolve(options.host)
    report.add(resolved.check)
    if not resolved.addresses:
        report.unreachable = "the name does not resolve"
        return report
    host = resolved.host
    implicit_up, plain_up = _reachability(options, host, report)
    if report.unreachable is not None:
        return report
    login_endpoint: Endpoint | None = None
    if implicit_up:
        endpoint = Endpoint(host, options.port, False, options.timeout)
        checks, worked = _tls_checks(options, endpoint, report, greeting=True)
        report.add(checks)
        if worked:
            login_endpoint = endpoint
    if plain_up:
        checks, stls = _plain_checks(options, host)
        report.add(checks)
        if stls:
            endpoint = Endpoint(host, options.stls_port, True, options.timeout)
            checks, worked = _tls_checks(options, endpoint, report, greeting=False)
            report.add(checks)
            if worked and login_endpoint is None:
                login_endpoint = endpoint
    if options.user is not None:
        if login_endpoint is None:
            report.add(
                failure(
                    "pop3.login",
                    "not attempted: neither POP3S nor STLS works; the password was not sent",
                    "fix the TLS problems above",
                )
            )
        else:
            context = verify_context(options.cafile)
            context.check_hostname = True
            report.add(pop3.login(login_endpoint, context, options.user, options.password or ""))
    return report
