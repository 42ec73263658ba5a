"""``mailslot serve`` without ``--config``: a working, TLS-only server in one command.

The first run fills a data directory with a private CA and a localhost certificate signed by it
(so clients verify TLS properly instead of being told to skip verification), a passwd-file with
user ``demo``, a Maildir holding a welcome message and a ``mailslot.toml`` listening on
127.0.0.1 with STLS (RFC 2595) on port 1110 and implicit TLS (RFC 8314) on port 1995.  Each
step only creates what is missing, so later runs reuse everything, and a run interrupted
half-way is completed by the next one.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import ipaddress
import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailslot.config import Config, ListenerConfig

DEMO_USER = "demo"
LOCALHOST = "127.0.0.1"
STLS_PORT = 1110
POP3S_PORT = 1995
# Mozilla's Server Side TLS profiles (and sslyze's check of them) allow server certificates
# of less than 366 days; the CA/Browser Forum's limit is 398.  A leaf that expires within
# RENEW_BEFORE is issued again at the next start.
VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)
# The private CA's own lifetime: clients are given ca.pem once, so it lasts.
CA_VALIDITY = datetime.timedelta(days=3650)
# Tolerates a client clock slightly behind ours right after the certificate is made.
BACKDATE = datetime.timedelta(hours=1)
SERVER_NAMES = ("localhost",)
SERVER_ADDRESSES = ("127.0.0.1", "::1")

CONFIG_TEMPLATE = """\
# mailslot configuration written by `mailslot serve` (quick start).
# Every key is described in docs/configuration.md; check edits with
#   mailslot check-config --config {config}
# Relative paths are relative to this file's directory.

# POP3 on {stls_port}: clients must upgrade with STLS (RFC 2595) before logging in.
[[listener]]
address = "127.0.0.1"
port = {stls_port}
tls = "starttls"

# POP3S on {pop3s_port}: TLS from the first byte (RFC 8314, the recommended way).
[[listener]]
address = "127.0.0.1"
port = {pop3s_port}
tls = "implicit"

[tls]
# A localhost certificate signed by the quick start's own CA (ca.pem): give clients ca.pem.
certificate = "fullchain.pem"
private_key = "privkey.pem"

[auth]
# Manage users with: mailslot user add|passwd|delete|list --config {config}
passwd_file = "users"

[store]
maildir = "mail/{{user}}/Maildir"

[server]
hostname = "localhost"
{identity}
[admin]
# mailslot who|kick|mailbox status|reload|stop --config {config}
socket = "admin.sock"
"""

# Written when the quick start is run as root: a root-started server without [server] user is
# refused, and a trial on 127.0.0.1 should not need an account made first.  The files of the
# data directory are root's, so a user named later must be given them (chown -R).
ROOT_IDENTITY = """\
# Started as root, this trial serves as root, on 127.0.0.1 only.  Before serving anyone else:
# create an account, give it the data directory (chown -R NAME {data_dir}),
# and replace this line with  user = "NAME"  (docs/configuration.md, [server]).
run_as_root = "quick start run as root: a local trial on 127.0.0.1"
"""


@dataclass(frozen=True, slots=True)
class QuickStart:
    """What :func:`prepare` found or made; ``password`` is set only when ``demo`` was created."""

    data_dir: Path
    config_path: Path
    created: bool
    password: str | None
    # Sentences for the default ports that were taken, with the free port used instead.
    moved: tuple[str, ...] = ()


def default_data_dir(environ: dict[str, str] | None = None) -> Path:
    """``$MAILSLOT_DATA_DIR`` or ``./mailslot-data``."""
    env = os.environ if environ is None else environ
    return Path(env.get("MAILSLOT_DATA_DIR") or "mailslot-data")


def prepare(data_dir: Path, *, as_root: bool | None = None) -> QuickStart:
    """Create whatever of the quick-start data directory is missing; return what is there.

    ``as_root`` (default: whether this process is root) writes a configuration that says why
    it serves as root (``[server] run_as_root``).
    """
    if as_root is None:
        as_root = os.geteuid() == 0
    data_dir = data_dir.absolute()
    created = not data_dir.exists()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_certificates(data_dir)
    password = ensure_demo_user(data_dir / "users")
    maildir = data_dir / "mail" / DEMO_USER / "Maildir"
    if not maildir.exists():
        deliver_welcome(data_dir / "mail" / "{user}" / "Maildir")
    config_path = data_dir / "mailslot.toml"
    moved: list[str] = []
    if not config_path.exists():
        stls_port, pop3s_port = (_port_or_free(port, moved) for port in (STLS_PORT, POP3S_PORT))
        _write_new(
            config_path,
            CONFIG_TEMPLATE.format(
                config=config_path,
                stls_port=stls_port,
                pop3s_port=pop3s_port,
                identity=ROOT_IDENTITY.format(data_dir=data_dir) if as_root else "",
            ).encode(),
            0o644,
        )
    return QuickStart(data_dir, config_path, created, password, tuple(moved))


def _port_or_free(port: int, moved: list[str]) -> int:
    """``port`` if 127.0.0.1 can bind it now, else a free one (said in ``moved``)."""
    if _bind_error(LOCALHOST, port) is None:
        return port
    free = free_port_near(LOCALHOST, port)
    moved.append(f"{LOCALHOST} port {port} is taken; the quick start uses port {free} instead")
    return free


def free_port_near(address: str, port: int) -> int:
    """A port that ``address`` can bind now: ``port`` + 10000 or the next free one above."""
    start = port + 10_000 if port + 10_000 < 65_000 else 20_000
    for candidate in range(start, min(start + 200, 65_536)):
        if _bind_error(address, candidate) is None:
            return candidate
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))  # the kernel's choice, as a last resort
        return int(probe.getsockname()[1])


def _bind_error(address: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The server sets SO_REUSEADDR too: without it, old TIME_WAIT sockets look busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            return exc
    return None


def report(start: QuickStart, config: Config, out: TextIO) -> None:
    """Tell the operator where things are and how to connect, once."""
    data = start.data_dir
    ca = data / "ca.pem"
    pop3s = _port(config.listeners, "implicit", POP3S_PORT)
    stls = _port(config.listeners, "starttls", STLS_PORT)
    for sentence in start.moved:
        out.write(f"mailslot quick start: {sentence}\n")
    if start.created or start.password is not None:
        out.write(f"mailslot quick start: created {data}\n")
    else:
        out.write(f"mailslot quick start: using {data}\n")
    out.write(
        f"  configuration  {start.config_path}\n"
        f"  CA certificate {ca}  (give this to clients; its key is ca-key.pem)\n"
        f"  users          {data / 'users'}\n"
        f"  mail           {data / 'mail'}\n"
    )
    if start.password is not None:
        password = start.password
        out.write(
            f"\nUser {DEMO_USER!r} has the password: {password}\n"
            "(shown only this once; it is stored only as an Argon2id hash)\n"
        )
    else:
        password = "PASSWORD"  # noqa: S105 - a placeholder shown to the operator
        out.write(
            f"\nThe password of {DEMO_USER!r} was shown on the first run. To set a new one:\n"
            f"  mailslot user passwd --config {start.config_path} {DEMO_USER}\n"
        )
    out.write(
        "\nTry it:\n"
        f"  curl --cacert {ca} pop3s://127.0.0.1:{pop3s}/ -u {DEMO_USER}:{password}\n"
        f"  curl --cacert {ca} --ssl-reqd pop3://127.0.0.1:{stls}/1 -u {DEMO_USER}:{password}\n"
        f"  mailslot doctor 127.0.0.1 --port {pop3s} --stls-port {stls} --cafile {ca}\n"
        "\n"
    )
    out.flush()


def busy_ports(listeners: Iterable[ListenerConfig]) -> list[str]:
    """Return a sentence for each listener whose address and port cannot be bound now.

    A check before starting, so the quick start can say which port is taken and what to do
    rather than fail with a bare OSError from deep in the server.
    """
    problems = []
    for listener in listeners:
        if listener.path is not None:
            continue
        exc = _bind_error(listener.address, listener.port)
        if exc is None:
            continue
        if exc.errno == errno.EADDRINUSE:
            free = free_port_near(listener.address, listener.port)
            reason = f"is already in use by another program (port {free} is free)"
        else:
            reason = f"cannot be used ({exc.strerror})"
        problems.append(f"{listener.address} port {listener.port} {reason}")
    return problems


# -- certificates ----------------------------------------------------------------------------


def ensure_certificates(data_dir: Path) -> None:
    """Make ``ca.pem``/``ca-key.pem`` and ``fullchain.pem``/``privkey.pem`` if missing, and
    the leaf again when it expires within :data:`RENEW_BEFORE`."""
    ca_cert_path, ca_key_path = data_dir / "ca.pem", data_dir / "ca-key.pem"
    chain_path, key_path = data_dir / "fullchain.pem", data_dir / "privkey.pem"
    if not (ca_cert_path.exists() and ca_key_path.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key)
        _write_new(ca_key_path, _private_pem(ca_key), 0o600, replace=True)
        _write_new(
            ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644, replace=True
        )
        # A new CA invalidates any old leaf.
        chain_path.unlink(missing_ok=True)
        key_path.unlink(missing_ok=True)
    if chain_path.exists() and key_path.exists() and not _expiring(chain_path):
        return
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path} is not the ECDSA key the quick start made")
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _server_certificate(leaf_key, ca_cert, loaded)
    _write_new(key_path, _private_pem(leaf_key), 0o600, replace=True)
    # The leaf alone: the CA signs it directly, and a root is never sent (clients have it; a
    # root in the chain makes strict validators count it as an intermediate below itself).
    _write_new(chain_path, leaf.public_bytes(serialization.Encoding.PEM), 0o644, replace=True)


def _expiring(chain_path: Path) -> bool:
    """Whether the leaf in ``chain_path`` expires within :data:`RENEW_BEFORE` (or is unreadable)."""
    try:
        leaf = x509.load_pem_x509_certificate(chain_path.read_bytes())
    except ValueError:
        return True
    return leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < RENEW_BEFORE


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailslot quick start"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"mailslot quick start CA {socket.gethostname()}"
            ),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now - BACKDATE + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_ADDRESSES]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAMES[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now - BACKDATE + VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_new(path: Path, data: bytes, mode: int, *, replace: bool = False) -> None:
    """Create ``path`` with ``mode`` from the start: a key file is never briefly world-readable."""
    if replace:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


# -- user and mail ---------------------------------------------------------------------------


def ensure_demo_user(passwd_file: Path) -> str | None:
    """Create ``demo`` with a random password unless the passwd-file exists; return it if new.

    An existing file is left alone even without ``demo``: the operator may have deleted it.
    """
    from mailslot.auth import admin

    if passwd_file.exists():
        return None
    password = secrets.token_urlsafe(12)
    admin.add_user(passwd_file, DEMO_USER, password, scheme="ARGON2ID")
    return password


def welcome_message(now: float | None = None) -> bytes:
    """The first message in ``demo``'s maildrop: headers per RFC 5322, LF line ends."""
    lines = [
        f"Date: {formatdate(now, localtime=True)}",
        "From: mailslot <postmaster@localhost>",
        f"To: {DEMO_USER} <{DEMO_USER}@localhost>",
        "Subject: Welcome to mailslot",
        f"Message-ID: {make_msgid('welcome', domain='localhost')}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "Hello,",
        "",
        "this message was delivered by the mailslot quick start. If you can read it,",
        "your POP3 client talked to mailslot over TLS and logged in as demo.",
        "",
        "Next steps:",
        "  mailslot user add --config mailslot.toml NAME   adds a user",
        "  mailslot check-config --config mailslot.toml    checks your edits",
        "  docs/configuration.md                           lists every setting",
        "",
        "Deleting this message (DELE, then QUIT) removes it for good.",
        "",
    ]
    return "\n".join(lines).encode("ascii")


def deliver_welcome(template: Path) -> None:
    from mailslot.store.maildir import MaildirStore

    store = MaildirStore(str(template))
    asyncio.run(store.deliver(DEMO_USER, welcome_message()))


def _port(listeners: Iterable[ListenerConfig], tls: str, default: int) -> int:
    return next((lst.port for lst in listeners if lst.tls == tls and lst.path is None), default)
