"""When to renew and how long to back off (:mod:`mailslot.tls.acme.schedule`): pure."""

from __future__ import annotations

import datetime

import pytest

from mailslot.tls.acme import schedule
from mailslot.tls.acme.schedule import CertificateInfo

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DAYS_90 = datetime.timedelta(days=90)


def info(serial: int = 0, names: tuple[str, ...] = ("a.example",), **kw: object) -> CertificateInfo:
    values: dict[object, object] = {
        "names": names,
        "not_before": START,
        "not_after": START + DAYS_90,
        "serial": serial,
        "self_signed": False,
    }
    values.update(kw)
    return CertificateInfo(**values)  # type: ignore[arg-type]


def test_renewal_is_at_two_thirds_less_at_most_a_twentieth_of_the_lifetime() -> None:
    assert schedule.renewal_time(info(serial=0)) == START + datetime.timedelta(days=60)
    times = [schedule.renewal_time(info(serial=s)) for s in range(0, 10007, 97)]
    assert min(times) >= START + datetime.timedelta(days=60 - 4.5)
    assert max(times) <= START + datetime.timedelta(days=60)
    assert len(set(times)) > 50  # spread, not one moment for every server
    # The same certificate always gets the same time.
    assert schedule.renewal_time(info(serial=1234)) == schedule.renewal_time(info(serial=1234))


def test_ari_wins_only_when_earlier() -> None:
    ours = schedule.renewal_time(info())
    earlier = START + datetime.timedelta(days=10)
    later = START + datetime.timedelta(days=80)
    assert schedule.renew_at(info(), earlier) == earlier
    assert schedule.renew_at(info(), later) == ours
    assert schedule.renew_at(info(), None) == ours


@pytest.mark.parametrize(
    ("certificate", "reason"),
    [
        (None, "there is no certificate yet"),
        (info(self_signed=True), "the certificate is self-signed (the bootstrap one)"),
        (info(names=("a.example",)), "the certificate does not cover b.example"),
        (info(names=("a.example", "b.example")), None),
    ],
)
def test_what_is_replaced_at_once(certificate: CertificateInfo | None, reason: str | None) -> None:
    assert schedule.replace_now(certificate, ["a.example", "b.example"]) == reason


def test_backoff_doubles_to_its_cap_and_respects_retry_after() -> None:
    assert [schedule.backoff(n, 60, 3600, None) for n in range(1, 9)] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]
    assert schedule.backoff(1, 60, 3600, 7200) == 7200  # the CA's Retry-After, even past the cap
    assert schedule.backoff(3, 60, 3600, 10) == 240
    assert schedule.backoff(10_000, 60, 3600, None) == 3600  # no overflow
