"""Renewal information (ACME ARI, RFC 9773) and the CA's rate limits.

Debian's pebble (2.4) has no ``renewalInfo``, so the ARI tests give the ``acme`` library's
real client a directory whose ``renewalInfo`` is a tiny HTTP server in the test: the request
names the certificate as RFC 9773 section 4.1 says (base64url of the authority key identifier
and of the serial's DER bytes), the suggested window is read, and a window earlier than two
thirds of the lifetime makes the loop renew now.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from acme import client, messages
from cryptography import x509
from tests.support.server import free_port

from mailslot.config import loads
from mailslot.tls.acme.issuer import AcmeFailure, Issuer, _Network
from mailslot.tls.acme.responders import ChallengeBoard
from mailslot.tls.acme.service import AcmeService
from mailslot.tls.acme.state import StateDirectory


class AriServer:
    def __init__(self, window: tuple[datetime.datetime, datetime.datetime]) -> None:
        self.window = window
        self.paths: list[str] = []
        self.port = free_port()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.paths.append(self.path)
                start, end = owner.window
                body = json.dumps(
                    {"suggestedWindow": {"start": start.isoformat(), "end": end.isoformat()}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Retry-After", "21600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/renewalInfo"


@pytest.fixture
def ari() -> Iterator[AriServer]:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    server = AriServer((now - datetime.timedelta(hours=2), now - datetime.timedelta(hours=1)))
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


class AriIssuer(Issuer):
    """The library's client over a directory that has only ``renewalInfo``; ``issue`` is
    counted, not sent."""

    base = ""
    issued = 0

    def _connect(self) -> client.ClientV2:
        directory = messages.Directory.from_json({"renewalInfo": self.base} if self.base else {})
        return client.ClientV2(directory, _Network(None))

    def issue(self) -> tuple[bytes, bytes]:
        self.issued += 1
        raise AcmeFailure("not sent in this test")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def leaf_pem(tmp_path: Path) -> tuple[Path, x509.Certificate]:
    leaf = trustme.CA().issue_cert("localhost")
    path = tmp_path / "fullchain.pem"
    path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    (tmp_path / "privkey.pem").write_bytes(leaf.private_key_pem.bytes())
    return path, x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())


def config_for(tmp_path: Path) -> str:
    return (
        '[[listener]]\nport = 1995\ntls = "implicit"\n'
        f'[tls]\ncertificate = "{tmp_path}/fullchain.pem"\nprivate_key = "{tmp_path}/privkey.pem"\n'
        f'[auth]\npasswd_file = "users"\n'
        f'[acme]\nenabled = true\nstate_directory = "{tmp_path}/state"\nretry_initial = 1.0\n'
    )


def test_the_suggested_window_is_fetched_for_the_certificate_id(
    tmp_path: Path, ari: AriServer
) -> None:
    path, certificate = leaf_pem(tmp_path)
    config = loads(config_for(tmp_path), check_files=False)
    issuer = AriIssuer(
        config.acme, ["localhost"], StateDirectory(tmp_path / "s"), ChallengeBoard(tmp_path)
    )
    issuer.base = ari.base
    when = issuer.suggested_renewal(path.read_bytes())
    start, end = ari.window
    assert when is not None and start <= when <= end
    key_id = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert key_id.value.key_identifier is not None
    serial = certificate.serial_number
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big")  # DER INTEGER content
    assert ari.paths == [f"/renewalInfo/{b64(key_id.value.key_identifier)}.{b64(serial_der)}"]


def test_an_earlier_ari_window_makes_the_loop_renew_now(tmp_path: Path, ari: AriServer) -> None:
    leaf_pem(tmp_path)
    config = loads(config_for(tmp_path), check_files=False)
    service = AcmeService(config)
    issuer = AriIssuer(config.acme, service.names, service.state, service.board)
    service.issuer = issuer
    # Without ARI (a directory with no renewalInfo) the fresh certificate waits its time.
    issuer.base = ""
    assert asyncio.run(service.check()) > datetime.timedelta(0)
    assert issuer.issued == 0
    # The CA's window has begun (an hour ago): renew now.
    issuer.base = ari.base
    with pytest.raises(AcmeFailure):
        asyncio.run(service.check())
    assert issuer.issued == 1
    status = service.state.status()
    assert status["ari_suggested"] == status["renew_at"]


def test_a_rate_limit_is_reported_with_the_cas_retry_after(tmp_path: Path) -> None:
    config = loads(config_for(tmp_path), check_files=False)
    service = AcmeService(config)
    network = _Network(None)
    network.retry_after = "7200"
    service.issuer._net = network
    error = messages.Error(
        typ="urn:ietf:params:acme:error:rateLimited", detail="too many certificates"
    )
    failure = service.issuer.fail(error)
    assert failure.rate_limited and failure.retry_after == 7200
    assert "rate limited by the CA: " in str(failure) and "too many certificates" in str(failure)
    assert service.failed(failure) == datetime.timedelta(seconds=7200)  # not 1 s
    status = service.state.status()
    assert status["state"] == "failing" and status["rate_limited"] is True
    assert status["account_problem"] is False


def test_an_account_error_is_recorded_as_an_account_problem(tmp_path: Path) -> None:
    """RFC 8555 section 6.7: the CA objects to the account (new terms to accept), which
    ``mailslot doctor --config`` reports as ``acme.account``."""
    config = loads(config_for(tmp_path), check_files=False)
    service = AcmeService(config)
    error = messages.Error(
        typ="urn:ietf:params:acme:error:userActionRequired", detail="accept the new terms"
    )
    failure = service.issuer.fail(error)
    assert failure.account and not failure.rate_limited
    service.failed(failure)
    status = service.state.status()
    assert status["state"] == "failing" and status["account_problem"] is True
    assert "accept the new terms" in status["last_error"]
