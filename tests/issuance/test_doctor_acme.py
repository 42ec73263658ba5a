"""``mailslot doctor --config`` on the host of a mailslot with ``[acme]`` against a private
pebble: after the server issued its certificate the doctor reports the last success, the next
renewal and that the ports serve the file the renewal loop wrote; with the CA down it reports
the failing order with the error and the next retry (docs/doctor.md, docs/acme.md)."""

from __future__ import annotations

from pathlib import Path

from tests.doctor.conftest import run_doctor
from tests.issuance.conftest import PebbleFactory
from tests.issuance.test_server_acme import DEADLINE, acme_section
from tests.support.server import MailslotServer, ServerFactory
from tests.support.tls import TlsFiles

from mailslot.config import load
from mailslot.tls.acme.service import bootstrap


def test_doctor_reports_an_issued_certificate_being_served(
    tmp_path: Path, pebble_factory: PebbleFactory, mailslot_factory: ServerFactory
) -> None:
    pebble = pebble_factory()
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    certs = tmp_path / "certs"
    state = tmp_path / "acme-state"
    # start() returns once the issued certificate verifies on every TLS listener.
    server: MailslotServer = mailslot_factory(
        tls=TlsFiles(root, certs / "fullchain.pem", certs / "privkey.pem"),
        tls_options={"reload_check_interval": 0.2},
        extra_sections={"acme": acme_section(pebble, state)},
    )
    outcome = run_doctor(
        "localhost", "--config", str(server.config_path), "--cafile", str(root), "--no-groups"
    )
    status = outcome.checks("acme.status")
    assert [c["status"] for c in status] == ["ok"], outcome.stdout
    assert "next renewal at" in status[0]["summary"]
    assert "mail.example.test" in status[0]["summary"]
    served = outcome.checks("local.served")
    assert [c["status"] for c in served] == ["ok", "ok"], outcome.stdout
    assert str(certs / "fullchain.pem") in served[0]["summary"]


def test_doctor_reports_a_failing_order_with_the_next_retry(
    tmp_path: Path, pebble_factory: PebbleFactory, mailslot_factory: ServerFactory
) -> None:
    pebble = pebble_factory(start=False)  # the CA is down
    certs = tmp_path / "certs"
    state = tmp_path / "acme-state"
    # One failure, then a long wait: status.json stays "failing" while the doctor reads it.
    acme = acme_section(pebble, state, retry_initial=3600, retry_max=3600)
    server: MailslotServer = mailslot_factory(
        start=False,
        tls=TlsFiles(certs / "fullchain.pem", certs / "fullchain.pem", certs / "privkey.pem"),
        extra_sections={"acme": acme},
    )
    assert bootstrap(load(server.config_path, check_files=False))
    server.start()
    server.wait_for_log("attempt 1 failed", deadline=DEADLINE)
    outcome = run_doctor(
        "localhost",
        "--config",
        str(server.config_path),
        "--cafile",
        str(certs / "fullchain.pem"),
        "--no-groups",
    )
    order = outcome.checks("acme.order")
    assert [c["status"] for c in order] == ["failure"], outcome.stdout
    assert "cannot reach the CA" in order[0]["summary"]
    assert "next try at" in order[0]["summary"]
    assert order[0]["details"]["failures"] == 1
    # The bootstrap certificate the loop wrote is what the ports serve.
    assert [c["status"] for c in outcome.checks("local.served")] == ["ok", "ok"]
    assert outcome.status == 1
