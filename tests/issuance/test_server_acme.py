"""``mailslot serve`` with ``[acme]`` against a private pebble: the server issues its own
certificate over HTTP-01 (RFC 8555 section 8.3), a verifying poplib client that trusts only
pebble's root then logs in on 995; a CA that is down is logged and retried with backoff
while the server serves its bootstrap certificate, and once the CA is up the certificate
comes."""

from __future__ import annotations

import json
import poplib
import re
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from tests.issuance.conftest import PebbleFactory
from tests.support.pebble import Pebble
from tests.support.server import MailslotServer, ServerFactory
from tests.support.tls import TlsFiles

from mailslot.config import load
from mailslot.tls.acme.service import bootstrap

DEADLINE = 30.0  # polling, not a timing threshold


def acme_section(pebble: Pebble, state: Path, **more: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "directory": pebble.url,
        "ca_bundle": str(pebble.ca_bundle),
        "email": "postmaster@example.test",
        "domains": ["mail.example.test"],
        "http_address": "127.0.0.1",
        "http_port": pebble.http_port,
        "tls_alpn_address": "127.0.0.1",
        "tls_alpn_port": pebble.tls_port,
        "state_directory": str(state),
        **more,
    }


def peer_certificate(port: int, cafile: Path) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="mail.example.test") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_issues_over_http01_and_a_verifying_client_logs_in(
    tmp_path: Path, pebble_factory: PebbleFactory, mailslot_factory: ServerFactory, workers: int
) -> None:
    pebble = pebble_factory()
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    certs = tmp_path / "certs"
    files = TlsFiles(root, certs / "fullchain.pem", certs / "privkey.pem")
    state = tmp_path / "acme-state"
    # start() returns once a handshake verified against pebble's root succeeds on every
    # TLS listener: the server has issued its certificate and loaded it.
    server: MailslotServer = mailslot_factory(
        tls=files,
        tls_options={"reload_check_interval": 0.2},
        extra_sections={"acme": acme_section(pebble, state), "server": {"workers": workers}},
    )
    _, port = server.implicit
    client = poplib.POP3_SSL("localhost", port, context=ssl.create_default_context(cafile=root))
    try:
        client.user("alice")
        client.pass_(server.password("alice"))
        assert client.stat()[0] == 0
    finally:
        client.quit()

    leaf = peer_certificate(port, root)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == ["localhost", "mail.example.test"]
    assert "Pebble" in leaf.issuer.rfc4514_string()
    key = load_pem_private_key(files.private_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert stat.S_IMODE(files.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "account.key").stat().st_mode) == 0o600
    status = json.loads((state / "status.json").read_text())
    assert status["state"] == "ok" and status["names"] == ["localhost", "mail.example.test"]
    assert "HTTP-01 challenge answered" in server.log()
    assert server.log().count("renewal process started") == 1  # one loop, whatever the workers


def test_a_ca_that_is_down_is_retried_with_backoff_and_the_server_serves_meanwhile(
    tmp_path: Path, pebble_factory: PebbleFactory, mailslot_factory: ServerFactory
) -> None:
    pebble = pebble_factory(start=False)
    certs = tmp_path / "certs"
    state = tmp_path / "acme-state"
    acme = acme_section(pebble, state, retry_initial=0.2, retry_max=0.8)
    server: MailslotServer = mailslot_factory(
        start=False,
        tls=TlsFiles(certs / "fullchain.pem", certs / "fullchain.pem", certs / "privkey.pem"),
        tls_options={"reload_check_interval": 0.2},
        extra_sections={"acme": acme},
    )
    # The bootstrap certificate, made as `serve` would, is what the probe trusts at start.
    assert bootstrap(load(server.config_path, check_files=False))
    server.start()
    deadline = time.monotonic() + DEADLINE
    while len(re.findall(r"attempt \d+ failed", server.log())) < 4:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)  # polling the log
    delays = [float(d) for d in re.findall(r"trying again in ([\d.]+) s", server.log())]
    assert delays[:4] == [0.2, 0.4, 0.8, 0.8], server.log()  # doubling, capped at retry_max
    assert "cannot reach the CA" in server.log()
    assert "Traceback" not in server.log()
    # status.json is written after the attempt's log line, and again as the next attempt
    # starts ("ordering"): read it until it shows a failed one.
    while True:
        status = json.loads((state / "status.json").read_text())
        if status["state"] == "failing" and status["failures"] >= 4:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.05)  # polling the state file
    # Still serving, with the bootstrap certificate.
    self_signed = peer_certificate(server.implicit[1], certs / "fullchain.pem")
    assert self_signed.issuer == self_signed.subject

    pebble.start()
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    while True:
        try:
            leaf = peer_certificate(server.implicit[1], root)
            break
        except (ssl.SSLError, OSError):
            assert time.monotonic() < deadline + DEADLINE, server.log()
            time.sleep(0.1)  # polling for the retry to succeed and the reload
    assert "Pebble" in leaf.issuer.rfc4514_string()
    status = json.loads((state / "status.json").read_text())
    assert status["state"] == "ok", (status, server.log())
