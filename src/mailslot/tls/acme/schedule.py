"""When to renew, and how long to wait after a failure: pure functions of their arguments.

- A certificate is renewed once two thirds of its lifetime have passed (Let's Encrypt's advice
  for its 90-day certificates: renew with 30 days left), less a jitter of up to a twentieth of
  the lifetime, so that servers set up at the same moment do not all renew at the same moment.
  The jitter comes from the certificate's serial number: the same certificate always gets the
  same time, across restarts, with nothing stored.
- The CA's renewal information (ACME ARI, RFC 9773 section 4.2) names a window; a time in it
  that is earlier than ours wins (a CA revoking certificates early asks for this).
- A certificate that is missing, self-signed (the bootstrap one) or does not cover every name
  is replaced now.
- After a failure the next try waits ``retry_initial`` seconds, doubling with each failure up
  to ``retry_max``, and never less than the CA's ``Retry-After`` (RFC 8555 section 6.6).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509

_RENEW_AT = 2 / 3
_JITTER = 1 / 20


@dataclass(frozen=True)
class CertificateInfo:
    """What the schedule needs of a certificate (the leaf of a chain)."""

    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    self_signed: bool

    @classmethod
    def from_pem(cls, data: bytes) -> CertificateInfo:
        """The first certificate of a PEM chain; ``ValueError`` if there is none."""
        leaf = x509.load_pem_x509_certificates(data)[0]
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = tuple(name.lower() for name in san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = ()
        return cls(
            names=names,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            serial=leaf.serial_number,
            self_signed=leaf.issuer == leaf.subject,
        )


def jitter(serial: int) -> float:
    """A number in [0, 1) that is the same for the same certificate."""
    return (serial % 10007) / 10007


def renewal_time(info: CertificateInfo) -> datetime.datetime:
    """Two thirds into the lifetime, less the certificate's jitter."""
    lifetime = info.not_after - info.not_before
    return info.not_before + lifetime * (_RENEW_AT - _JITTER * jitter(info.serial))


def replace_now(info: CertificateInfo | None, names: list[str]) -> str | None:
    """Why the certificate must be replaced at once, or ``None`` if it may wait its time."""
    if info is None:
        return "there is no certificate yet"
    if info.self_signed:
        return "the certificate is self-signed (the bootstrap one)"
    missing = [name for name in names if name not in info.names]
    if missing:
        return f"the certificate does not cover {', '.join(missing)}"
    return None


def renew_at(info: CertificateInfo, ari: datetime.datetime | None) -> datetime.datetime:
    """When to renew: our time, or the CA's suggested one (ARI) if that is earlier."""
    ours = renewal_time(info)
    return min(ours, ari) if ari is not None else ours


def backoff(failures: int, initial: float, maximum: float, retry_after: float | None) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
    delay = min(maximum, initial * float(2 ** min(max(failures - 1, 0), 60)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
