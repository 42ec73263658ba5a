"""``mailslot_certificate_expiry_timestamp_seconds`` scraped over HTTP from a real server with
two certificates side by side (an ECDSA default and an RSA one in ``[[tls.certificates]]``),
made by trustme with chosen ``notAfter`` dates: one series per file with its exact date, with
one worker and with two (not summed over the processes); a replaced file changes its series
after the file watch's reload, its old series gone; a replacement that fails the checks
leaves the served value.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from tests.metrics.test_exporter import metrics_port, samples, scrape
from tests.support.server import MailslotServer, ServerFactory, free_port
from tests.support.tls import TlsFiles

NAME = "mailslot_certificate_expiry_timestamp_seconds"
DEADLINE = 30.0  # seconds; polling for the reload, not a threshold
# X.509 dates have whole seconds: the dates chosen have no fraction, so they are the values.
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)

Series = dict[tuple[str, str, str], float]  # (certificate, names, key_type) -> value


@dataclass
class Files:
    certificate: Path
    private_key: Path


def install(directory: Path, leaf: trustme.LeafCert) -> Files:
    """The chain and key in ``directory``, each replaced in one rename, key first (as ACME
    and certbot do)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = Files(directory / "fullchain.pem", directory / "privkey.pem")
    for path, data in (
        (files.private_key, leaf.private_key_pem.bytes()),
        (files.certificate, b"".join(blob.bytes() for blob in leaf.cert_chain_pems)),
    ):
        temporary = path.with_suffix(".new")
        temporary.write_bytes(data)
        temporary.chmod(0o600)
        os.replace(temporary, path)
    return files


def expiry(port: int) -> Series:
    found: Series = {}
    for (name, labels), value in samples(scrape(port)).items():
        if name == NAME:
            label = dict(labels)
            found[(label["certificate"], label["names"], label["key_type"])] = value
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_each_certificate_has_its_expiry_until_its_file_is_replaced(
    tmp_path: Path, mailslot_factory: ServerFactory, workers: int
) -> None:
    ca = trustme.CA(organization_name="mailslot expiry metric")
    ecdsa_after = NOW + dt.timedelta(days=40)
    rsa_after = NOW + dt.timedelta(days=10)
    default = install(
        tmp_path / "ecdsa",
        ca.issue_cert("localhost", "127.0.0.1", not_after=ecdsa_after),
    )
    rsa = install(
        tmp_path / "rsa",
        ca.issue_cert(
            "localhost",
            "mail.example.org",
            not_after=rsa_after,
            key_type=trustme.KeyType.RSA,
        ),
    )
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server: MailslotServer = mailslot_factory(
        tls=TlsFiles(ca_pem, default.certificate, default.private_key),
        tls_options={"reload_check_interval": 0.2},
        extra_sections={
            "server": {"workers": workers},
            "metrics": {"port": free_port()},
        },
        start=False,
    )
    with server.config_path.open("a") as config:
        config.write(
            f'[[tls.certificates]]\ncertificate = "{rsa.certificate}"\n'
            f'private_key = "{rsa.private_key}"\n'
        )
    server.start()
    port = metrics_port(server)

    ecdsa_series = (str(default.certificate), "localhost,127.0.0.1", "ecdsa")
    assert expiry(port) == {
        ecdsa_series: ecdsa_after.timestamp(),
        (str(rsa.certificate), "localhost,mail.example.org", "rsa"): rsa_after.timestamp(),
    }

    # The RSA file is renewed with other names: the watch reloads, its series follows and
    # the series of the names it no longer has goes.
    renewed_after = NOW + dt.timedelta(days=90)
    install(
        tmp_path / "rsa",
        ca.issue_cert(
            "localhost",
            "pop.example.org",
            not_after=renewed_after,
            key_type=trustme.KeyType.RSA,
        ),
    )
    wanted = {
        ecdsa_series: ecdsa_after.timestamp(),
        (str(rsa.certificate), "localhost,pop.example.org", "rsa"): renewed_after.timestamp(),
    }
    deadline = time.monotonic() + DEADLINE
    while (found := expiry(port)) != wanted:
        assert time.monotonic() < deadline, (found, server.log())
        time.sleep(0.1)

    # A replacement that fails the checks (an expired certificate) is not loaded: the
    # series keep the certificates still served.
    install(
        tmp_path / "rsa",
        ca.issue_cert(
            "localhost",
            not_before=NOW - dt.timedelta(days=30),
            not_after=NOW - dt.timedelta(days=1),
            key_type=trustme.KeyType.RSA,
        ),
    )
    server.wait_for_log("TLS reload failed, keeping the old certificate", deadline=DEADLINE)
    assert expiry(port) == wanted
