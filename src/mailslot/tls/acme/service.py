"""The renewal loop: keep the certificate ``[tls]`` names issued and fresh (docs/acme.md).

Each round reads the certificate at ``[tls] certificate``.  If it is missing, self-signed (the
bootstrap certificate) or does not cover every name, an order starts at once; otherwise the
round asks the CA's renewal information (RFC 9773) and sleeps until the renewal time
(:mod:`.schedule`), at most :data:`CHECK_EVERY`.  A new certificate is written atomically
where ``[tls]`` points, key first, then the chain; the server's file watch
(:mod:`mailslot.tls.watch`) then loads it for new handshakes, and sessions already open keep
theirs.

A failure (CA unreachable, rate limit, validation) is logged as one line, recorded in the
state directory's ``status.json`` and retried after an exponential backoff capped at ``[acme]
retry_max`` and never before the CA's ``Retry-After``; the loop itself never ends on one, and
the server serves the certificate it has meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from mailslot import privileges
from mailslot.config import Config
from mailslot.tls.acme import schedule
from mailslot.tls.acme.issuer import AcmeFailure, Issuer
from mailslot.tls.acme.responders import ChallengeBoard, Http01Responder, TlsAlpnResponder
from mailslot.tls.acme.settings import domains
from mailslot.tls.acme.state import (
    StateDirectory,
    new_private_key,
    private_key_pem,
    write_atomically,
)

logger = logging.getLogger("mailslot.acme")

CHECK_EVERY = datetime.timedelta(hours=6)  # RFC 9773 section 4.3's default polling interval
Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _iso(when: datetime.datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds")


def bootstrap(config: Config) -> bool:
    """Write a self-signed certificate (and key) where ``[tls]`` points if either file is
    missing, so that the server starts and serves TLS until the CA's certificate arrives.
    Whether it wrote one."""
    certificate, key_path = config.tls.certificate, config.tls.private_key
    if certificate is None or key_path is None:
        return False
    if certificate.exists() and key_path.exists():
        return False
    names = domains(config)
    key = new_private_key(config.acme.key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = _utcnow()
    chain = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    for path in (certificate, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    mode, group = key_access(config)
    write_atomically(key_path, private_key_pem(key), mode, group=group, private=True)
    write_atomically(certificate, chain.public_bytes(serialization.Encoding.PEM), 0o644)
    logger.warning(
        "acme: no certificate at %s yet: serving a self-signed one until the CA issues one",
        certificate,
    )
    return True


def key_access(config: Config) -> tuple[int, int | None]:
    """The mode and group of a new key file: 0600, or 0640 and ``[server] user``'s group when
    root starts one worker that drops to that user and reloads the key as it
    (docs/configuration.md, ``[tls] private_key``)."""
    if os.geteuid() != 0 or config.server.user is None or config.server.workers > 1:
        return 0o600, None
    try:
        identity = privileges.target(config.server)
    except privileges.PrivilegeError:
        return 0o600, None
    return (0o640, identity.gid) if identity is not None else (0o600, None)


class AcmeService:
    """The loop of one server; the responders it needs; one round at a time."""

    def __init__(self, config: Config, *, clock: Clock = _utcnow) -> None:
        assert config.tls.certificate is not None and config.tls.private_key is not None
        self.config = config
        self.acme = config.acme
        self.certificate: Path = config.tls.certificate
        self.private_key: Path = config.tls.private_key
        self.names = domains(config)
        self.state = StateDirectory(config.acme.state_directory)
        self.board = ChallengeBoard(self.state.path)
        self.clock = clock
        self.issuer = Issuer(self.acme, self.names, self.state, self.board, clock=clock)
        self.failures = 0
        self._responders: list[Http01Responder | TlsAlpnResponder] = []
        self._started = False

    # -- responders ----------------------------------------------------------------------

    async def start(self) -> None:
        """Make the state directory and bind the responder the challenge needs."""
        self.state.ensure()
        self._started = self.acme.challenge == "dns-01"  # nothing to bind
        if self.acme.challenge == "http-01":
            responder: Http01Responder | TlsAlpnResponder = Http01Responder(
                self.board, self.acme.http_address, self.acme.http_port
            )
        elif self.acme.challenge == "tls-alpn-01":
            responder = TlsAlpnResponder(
                self.board, self.acme.tls_alpn_address, self.acme.tls_alpn_port
            )
        else:
            return
        await responder.start()
        self._responders.append(responder)
        self._started = True

    async def close(self) -> None:
        for responder in self._responders:
            await responder.close()
        self._responders.clear()
        self._started = False

    # -- a round -------------------------------------------------------------------------

    def current(self) -> tuple[schedule.CertificateInfo | None, bytes]:
        try:
            data = self.certificate.read_bytes()
            return schedule.CertificateInfo.from_pem(data), data
        except (OSError, ValueError, IndexError):
            return None, b""

    async def check(self, *, force: bool = False) -> datetime.timedelta:
        """One round: renew if it is time (or ``force``); how long until the next round.
        Raises :class:`AcmeFailure`."""
        info, chain = self.current()
        reason = "a renewal was asked for" if force else schedule.replace_now(info, self.names)
        if reason is None:
            assert info is not None
            ari = await asyncio.to_thread(self.issuer.suggested_renewal, chain)
            when = schedule.renew_at(info, ari)
            now = self.clock()
            self.state.update_status(
                state="ok",
                names=list(info.names),
                not_after=_iso(info.not_after),
                renew_at=_iso(when),
                ari_suggested=_iso(ari),
                checked=_iso(now),
            )
            if now < when:
                logger.info(
                    "acme: the certificate for %s is valid until %s; renewal at %s",
                    ", ".join(info.names),
                    _iso(info.not_after),
                    _iso(when),
                )
                return min(when - now, CHECK_EVERY)
            reason = "renewal is due" + (" (the CA's renewal information)" if ari == when else "")
        info = await self.renew(reason)
        wait = schedule.renewal_time(info) - self.clock()
        return max(datetime.timedelta(0), min(wait, CHECK_EVERY))

    async def renew(self, reason: str) -> schedule.CertificateInfo:
        logger.info("acme: ordering a certificate for %s: %s", ", ".join(self.names), reason)
        self.state.update_status(state="ordering", reason=reason)
        chain, key = await asyncio.to_thread(self.issuer.issue)
        info = self.verify(chain, key)
        self.install(chain, key)
        self.failures = 0
        self.state.update_status(
            state="ok",
            names=list(info.names),
            not_after=_iso(info.not_after),
            renew_at=_iso(schedule.renewal_time(info)),
            issued=_iso(self.clock()),
            last_error=None,
            failures=0,
            next_attempt=None,
            rate_limited=False,
            account_problem=False,
        )
        logger.info(
            "acme: certificate issued for %s, valid until %s, written to %s",
            ", ".join(info.names),
            _iso(info.not_after),
            self.certificate,
        )
        return info

    def verify(self, chain: bytes, key: bytes) -> schedule.CertificateInfo:
        """The issued chain's leaf, checked before it replaces anything: it parses, it is for
        ``key`` and for every name.  Otherwise :class:`AcmeFailure`, and the files stay."""
        try:
            info = schedule.CertificateInfo.from_pem(chain)
            leaf = x509.load_pem_x509_certificates(chain)[0]
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, IndexError, TypeError) as exc:
            raise AcmeFailure(f"the CA sent a certificate that does not parse: {exc}") from exc
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(
            serialization.Encoding.DER, public
        ) != private.public_key().public_bytes(serialization.Encoding.DER, public):
            raise AcmeFailure("the CA sent a certificate for another key; not installed")
        missing = schedule.replace_now(info, self.names)
        if missing is not None:
            raise AcmeFailure(f"the CA's certificate is not usable: {missing}; not installed")
        return info

    def install(self, chain: bytes, key: bytes) -> None:
        """Key first, then the chain, each in one rename: the watch reloads once both match."""
        mode, group = key_access(self.config)
        write_atomically(self.private_key, key, mode, group=group, private=True)
        write_atomically(self.certificate, chain, 0o644)

    def failed(self, failure: AcmeFailure, *, retrying: bool = True) -> datetime.timedelta:
        """Log and record ``failure``; how long to wait before the next try."""
        self.failures += 1
        seconds = schedule.backoff(
            self.failures, self.acme.retry_initial, self.acme.retry_max, failure.retry_after
        )
        next_attempt = self.clock() + datetime.timedelta(seconds=seconds)
        if retrying:
            logger.error(
                "acme: %s; attempt %d failed, trying again in %g s (the server keeps serving "
                "the certificate it has)",
                failure,
                self.failures,
                seconds,
            )
        else:
            logger.error("acme: %s", failure)
        self.state.update_status(
            state="failing",
            last_error=str(failure),
            failures=self.failures,
            rate_limited=failure.rate_limited,
            account_problem=failure.account,
            next_attempt=_iso(next_attempt) if retrying else None,
        )
        return datetime.timedelta(seconds=seconds)

    async def run(self, stopping: asyncio.Event) -> None:
        """Rounds until ``stopping`` is set; never raises for a failed round (nor for a
        responder port that cannot be bound yet: that is retried like any failure)."""
        try:
            while not stopping.is_set():
                try:
                    if not self._started:
                        await self.start()
                    wait = await self.check()
                except AcmeFailure as failure:
                    wait = self.failed(failure)
                except OSError as exc:  # the responder's port: in use, or not ours to bind
                    wait = self.failed(AcmeFailure(f"cannot answer the challenge: {exc}"))
                except Exception as exc:  # a bug: logged whole, retried as a failure
                    logger.exception("acme: unexpected error")
                    wait = self.failed(AcmeFailure(f"unexpected error: {exc!r}"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), wait.total_seconds())
        finally:
            await self.close()

    async def once(self, *, force: bool) -> bool:
        """``mailslot acme issue|renew``: one round with the responders up; whether it
        succeeded (the failure is logged and recorded)."""
        try:
            await self.start()
            await self.check(force=force)
        except AcmeFailure as failure:
            self.failed(failure, retrying=False)
            return False
        except OSError as exc:
            self.failed(AcmeFailure(f"cannot answer the challenge: {exc}"), retrying=False)
            return False
        finally:
            await self.close()
        return True
