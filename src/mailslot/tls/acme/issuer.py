"""One ACME order, from the account to the certificate (RFC 8555 section 7), through the
``acme`` library (certbot's client).  Blocking: :mod:`.service` runs it in a thread.

The account key (ECDSA P-256, :mod:`.state`) is registered with the CA, or found again
(``newAccount`` for a known key returns the existing account, section 7.3.1), each time a
client is built.  The certificate's key is new for every order, of ``[acme] key_type``.  Every
failure leaves as :class:`AcmeFailure`, with the CA's ``Retry-After`` when it sent one and
whether it was a rate limit (``urn:ietf:params:acme:error:rateLimited``, section 6.6).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.b64 import b64encode
from josepy.jwa import ES256, RS256
from josepy.jwk import JWK, JWKEC, JWKRSA

from mailslot.config import AcmeConfig
from mailslot.tls.acme.dns01 import DnsUpdateError, Rfc2136
from mailslot.tls.acme.responders import ChallengeBoard
from mailslot.tls.acme.state import StateDirectory, new_private_key, private_key_pem

logger = logging.getLogger("mailslot.acme")

USER_AGENT = "mailslot"
ORDER_TIMEOUT = datetime.timedelta(seconds=90)


class AcmeFailure(Exception):
    """An order or a request failed; ``retry_after`` (seconds) if the CA said when to retry;
    ``account``: the CA objects to the account itself (RFC 8555 section 6.7), which a retry
    alone will not mend."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        rate_limited: bool = False,
        account: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.account = account


# RFC 8555 section 6.7 error types about the account rather than an order.
ACCOUNT_ERRORS = frozenset(
    {
        "accountDoesNotExist",
        "externalAccountRequired",
        "invalidContact",
        "unsupportedContact",
        "userActionRequired",
        "unauthorized",
    }
)


class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The (empty) answer to a ``tls-alpn-01`` challenge (RFC 8737 section 3), which the
    ``acme`` library no longer models."""

    typ = "tls-alpn-01"


class _Network(client.ClientNetwork):
    """The library's client, remembering the last response's ``Retry-After``."""

    retry_after: str | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.retry_after = response.headers.get("Retry-After")
        return response


def _seconds(retry_after: str | None, now: datetime.datetime) -> float | None:
    if retry_after is None:
        return None
    try:
        return max(0.0, float(int(retry_after)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())


class Issuer:
    """Orders certificates for ``names`` from ``[acme] directory``."""

    def __init__(
        self,
        acme: AcmeConfig,
        names: list[str],
        state: StateDirectory,
        board: ChallengeBoard,
        *,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.acme = acme
        self.names = names
        self.state = state
        self.board = board
        self.dns: Rfc2136 | None = None  # made at the first DNS-01 order (reads the secret)
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._client: client.ClientV2 | None = None
        self._net: _Network | None = None
        self._jwk: JWK | None = None

    # -- the client ----------------------------------------------------------------------

    def _connect(self) -> client.ClientV2:
        if self._client is not None:
            return self._client
        key = self.state.load_account_key()
        if isinstance(key, ec.EllipticCurvePrivateKey):
            jwk: JWK = JWKEC(key=key)
            alg = ES256
        else:
            jwk = JWKRSA(key=key)
            alg = RS256
        net = _Network(jwk, alg=alg, user_agent=USER_AGENT)
        if self.acme.ca_bundle is not None:
            # requests takes a CA file where the library's annotation says bool.
            net.verify_ssl = str(self.acme.ca_bundle)  # type: ignore[assignment]
        self._net = net
        directory = client.ClientV2.get_directory(self.acme.directory, net)
        acme_client = client.ClientV2(directory, net)
        contact = () if self.acme.email is None else (f"mailto:{self.acme.email}",)
        registration = messages.NewRegistration(contact=contact, terms_of_service_agreed=True)
        try:
            account = acme_client.new_account(registration)
        except errors.ConflictError as exc:  # this key has an account already
            known = messages.RegistrationResource(uri=exc.location, body=registration)
            account = acme_client.query_registration(known)
        net.account = account
        self.state.write_json(
            self.state.account, {"directory": self.acme.directory, "uri": account.uri}
        )
        self._client = acme_client
        self._jwk = jwk
        return acme_client

    def fail(self, exc: BaseException) -> AcmeFailure:
        """``exc`` as an :class:`AcmeFailure`, with the CA's retry hint; the client is built
        anew next time (the CA may have restarted, the account with it)."""
        self._client = None
        retry = _seconds(self._net.retry_after if self._net else None, self._clock())
        if isinstance(exc, AcmeFailure):
            return exc
        if isinstance(exc, messages.Error):
            limited = exc.code == "rateLimited"
            what = "rate limited by the CA" if limited else "the CA refused"
            return AcmeFailure(
                f"{what}: {exc}",
                retry_after=retry,
                rate_limited=limited,
                # by the type: the library's ``code`` knows no userActionRequired
                account=str(exc.typ or "").rpartition(":")[2] in ACCOUNT_ERRORS,
            )
        if isinstance(exc, errors.ValidationError):
            details = "; ".join(
                f"{authzr.body.identifier.value}: {_challenge_error(authzr)}"
                for authzr in exc.failed_authzrs
            )
            return AcmeFailure(f"validation failed: {details}", retry_after=retry)
        if isinstance(exc, requests.RequestException):
            return AcmeFailure(f"cannot reach the CA at {self.acme.directory}: {exc}")
        if isinstance(exc, DnsUpdateError):
            return AcmeFailure(str(exc))
        return AcmeFailure(f"{type(exc).__name__}: {exc}", retry_after=retry)

    # -- an order ------------------------------------------------------------------------

    def issue(self) -> tuple[bytes, bytes]:
        """A new certificate chain and its key (both PEM); :class:`AcmeFailure` if not."""
        try:
            return self._issue()
        except Exception as exc:
            raise self.fail(exc) from exc

    def _issue(self) -> tuple[bytes, bytes]:
        acme_client = self._connect()
        key_pem = private_key_pem(new_private_key(self.acme.key_type))
        csr = crypto_util.make_csr(key_pem, self.names)
        order = acme_client.new_order(csr)
        cleanups: list[Callable[[], None]] = []
        try:
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # validated recently (authorization reuse, section 7.1.4)
                challb = self._choose(authzr)
                response = self._publish(challb, authzr.body.identifier.value, cleanups)
                acme_client.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + ORDER_TIMEOUT  # the library's naive time
            order = acme_client.poll_and_finalize(order, deadline)
        finally:
            for cleanup in cleanups:
                try:
                    cleanup()
                except Exception as exc:  # a record left behind harms no validation
                    logger.warning("acme: cleaning up a challenge failed: %s", exc)
        if not order.fullchain_pem:
            raise AcmeFailure("the CA finalized the order but sent no certificate")
        return order.fullchain_pem.encode("ascii"), key_pem

    def _choose(self, authzr: messages.AuthorizationResource) -> messages.ChallengeBody:
        for challb in authzr.body.challenges:
            if _type(challb) == self.acme.challenge:
                return challb
        offered = ", ".join(_type(c) for c in authzr.body.challenges)
        raise AcmeFailure(
            f"the CA offers no {self.acme.challenge} challenge for "
            f"{authzr.body.identifier.value} (it offers {offered}); choose one in [acme] challenge"
        )

    def _publish(
        self, challb: messages.ChallengeBody, domain: str, cleanups: list[Callable[[], None]]
    ) -> challenges.ChallengeResponse:
        assert self._jwk is not None
        chall = challb.chall
        if isinstance(chall, challenges.HTTP01):
            response, validation = chall.response_and_validation(self._jwk)
            token = chall.encode("token")
            self.board.http[token] = validation.encode("ascii")
            cleanups.append(lambda: _discard(self.board.http, token))
            return response
        if isinstance(chall, challenges.DNS01):
            if self.dns is None:
                self.dns = Rfc2136(self.acme)
            response, value = chall.response_and_validation(self._jwk)
            record = chall.validation_domain_name(domain)
            self.dns.add(record, domain, value)
            cleanups.append(lambda: self.dns.remove(record, domain, value) if self.dns else None)
            return response
        # tls-alpn-01: an UnrecognizedChallenge to the library; the key authorization is
        # token "." base64url(JWK thumbprint) (RFC 8555 section 8.1).
        token = str(chall.to_partial_json()["token"])
        thumbprint = b64encode(self._jwk.thumbprint()).decode("ascii")
        key_authorization = f"{token}.{thumbprint}"
        self.board.add_alpn(domain, key_authorization)
        cleanups.append(lambda: _discard(self.board.alpn, domain.lower()))
        return TLSALPN01Response(key_authorization=key_authorization)

    # -- renewal information (RFC 9773) --------------------------------------------------

    def suggested_renewal(self, chain_pem: bytes) -> datetime.datetime | None:
        """A time in the CA's suggested renewal window, or ``None`` (no ARI, or it failed)."""
        try:
            # (None, ...) when the directory has no renewalInfo.
            when, _next = self._connect().renewal_time(chain_pem)
        except Exception as exc:
            logger.warning("acme: no renewal information from the CA: %s", self.fail(exc))
            return None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return when


def _type(challb: messages.ChallengeBody) -> str:
    """A challenge's type, also for those the library does not model (tls-alpn-01)."""
    if isinstance(challb.chall, challenges.UnrecognizedChallenge):
        return str(challb.chall.jobj.get("type"))
    return str(challb.chall.typ)


def _challenge_error(authzr: messages.AuthorizationResource) -> str:
    for challb in authzr.body.challenges:
        if challb.error is not None:
            return str(challb.error)
    return str(authzr.body.status)


def _discard(table: dict[str, Any], key: str) -> None:
    table.pop(key, None)
