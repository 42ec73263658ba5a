"""A private pebble (Debian's ACME test CA, package ``pebble``) for the ACME tests.

Started on free 127.0.0.1 ports with a config of its own: its API over HTTPS with a
certificate from a throwaway trustme CA (the package ships none; the tests trust that CA as
``[acme] ca_bundle``), its validation of HTTP-01 and TLS-ALPN-01 aimed at the ports the test
gives (where mailslot's responders listen), and its DNS lookups sent to the test's DNS server
(:mod:`tests.support.dnsserver`).  ``PEBBLE_VA_NOSLEEP=1`` (validate at once) and
``PEBBLE_WFE_NONCEREJECT=0`` (no random bad nonces).  The issuing root, which a POP3 client
must trust, comes from the management API's ``/roots/0``.  :meth:`Pebble.stop` kills it.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import trustme

from .programs import require_program
from .server import free_port

START_DEADLINE = 15.0  # seconds; polled, not a threshold


@dataclass
class Pebble:
    directory: Path
    port: int
    management_port: int
    ca_bundle: Path  # trusts pebble's API certificate
    http_port: int
    tls_port: int
    dns_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def start(self) -> Pebble:
        program = require_program("pebble")
        config = self.directory / "pebble-config.json"
        log = (self.directory / "pebble.log").open("ab")
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        self.process = subprocess.Popen(
            [program, "-config", str(config), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + START_DEADLINE
        while True:
            try:
                with urllib.request.urlopen(self.url, context=self._context(), timeout=5):  # noqa: S310
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pebble did not come up:\n{self.log()}") from None
                time.sleep(0.05)  # polling for pebble to listen

    def root_pem(self) -> bytes:
        """The root that pebble's certificates chain to (it makes a new one each start)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=self._context(), timeout=10) as response:
            data: bytes = response.read()
        return data

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        try:
            return (self.directory / "pebble.log").read_text(errors="replace")
        except OSError:
            return "(no pebble log)"


def make_pebble(directory: Path, *, http_port: int, tls_port: int, dns_port: int) -> Pebble:
    """A pebble configured in ``directory`` (not started)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="pebble API test CA")
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    ca_bundle = directory / "api-ca.pem"
    ca.cert_pem.write_to_path(str(ca_bundle))
    certificate = directory / "api-cert.pem"
    certificate.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key = directory / "api-key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    pebble = Pebble(
        directory,
        free_port(),
        free_port(),
        ca_bundle,
        http_port,
        tls_port,
        dns_port,
    )
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{pebble.port}",
            "managementListenAddress": f"127.0.0.1:{pebble.management_port}",
            "certificate": str(certificate),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (directory / "pebble-config.json").write_text(json.dumps(config, indent=2))
    return pebble
