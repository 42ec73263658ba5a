"""Renewal against a private pebble, the clock injected: nothing happens before two thirds
of the lifetime, the renewal then replaces the files where ``[tls]`` points, the running
server (its file watch) serves the new certificate to new connections and its expiry metric
follows, and a session open during the swap goes on to its QUIT."""

from __future__ import annotations

import asyncio
import datetime
import poplib
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from tests.issuance.conftest import PebbleFactory
from tests.issuance.test_server_acme import acme_section
from tests.metrics.test_exporter import metrics_port, samples, scrape
from tests.support.server import MailslotServer, ServerFactory, free_port
from tests.support.tls import TlsFiles

from mailslot.config import load
from mailslot.tls.acme.schedule import CertificateInfo
from mailslot.tls.acme.service import AcmeService

DEADLINE = 30.0  # polling, not a timing threshold


def served_serial(port: int, root: Path) -> int:
    context = ssl.create_default_context(cafile=str(root))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def expiry_of(server: MailslotServer, certificate: Path) -> float:
    """The scraped expiry of ``certificate``, the one series there is."""
    found = {
        dict(labels)["certificate"]: value
        for (name, labels), value in samples(scrape(metrics_port(server))).items()
        if name == "mailslot_certificate_expiry_timestamp_seconds"
    }
    assert list(found) == [str(certificate)]
    return found[str(certificate)]


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.mark.parametrize("workers", [1, 2])
def test_renewal_at_two_thirds_swaps_the_certificate_under_an_open_session(
    tmp_path: Path, pebble_factory: PebbleFactory, mailslot_factory: ServerFactory, workers: int
) -> None:
    pebble = pebble_factory()
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    certs = tmp_path / "certs"
    files = TlsFiles(root, certs / "fullchain.pem", certs / "privkey.pem")
    # The server only serves the files (its [acme] is off); the loop runs here, on a clock
    # the test moves.
    server: MailslotServer = mailslot_factory(
        start=False,
        tls=files,
        tls_options={"reload_check_interval": 0.2},
        extra_sections={
            "acme": acme_section(pebble, tmp_path / "state") | {"enabled": False},
            "server": {"workers": workers},  # 2: a new generation, the old one retires
            "metrics": {"port": free_port()},
        },
    )
    config = load(server.config_path, check_files=False)
    clock = Clock()
    service = AcmeService(config, clock=clock)
    certs.mkdir()
    assert asyncio.run(service.once(force=False))  # the first certificate
    first = CertificateInfo.from_pem(files.certificate.read_bytes())
    server.start()
    _, port = server.implicit
    assert served_serial(port, root) == first.serial
    assert expiry_of(server, files.certificate) == first.not_after.timestamp()

    session = poplib.POP3_SSL("localhost", port, context=ssl.create_default_context(cafile=root))
    session.user("alice")
    session.pass_(server.password("alice"))
    assert session.stat() == (0, 0)

    def on_disk() -> int:
        return CertificateInfo.from_pem(files.certificate.read_bytes()).serial

    async def rounds() -> tuple[datetime.timedelta, int]:
        await service.start()
        try:
            lifetime = first.not_after - first.not_before
            clock.now = first.not_before + lifetime / 2
            early = await service.check()  # not yet: waits
            unchanged = on_disk()
            clock.now = first.not_before + lifetime * 2 / 3 + datetime.timedelta(seconds=1)
            await service.check()  # renews
            return early, unchanged
        finally:
            await service.close()

    early, unchanged = asyncio.run(rounds())
    assert early > datetime.timedelta(0) and unchanged == first.serial
    second = CertificateInfo.from_pem(files.certificate.read_bytes())
    assert second.serial != first.serial
    deadline = time.monotonic() + DEADLINE
    while served_serial(port, root) != second.serial:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)  # polling for the file watch's reload
    # The metric is written once the reload succeeded, just after the new certificate is
    # served (with two workers: once the new generation is forked).
    while expiry_of(server, files.certificate) != second.not_after.timestamp():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    # The session that was open across the swap goes on.
    assert session.stat() == (0, 0)
    assert session.noop().startswith(b"+OK")
    assert session.quit().startswith(b"+OK")
    # With two workers the parent says it after writing the metric polled above.
    server.wait_for_log("TLS certificate reloaded")
