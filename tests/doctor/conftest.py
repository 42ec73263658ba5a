"""Fixtures for ``mailslot doctor``: certificates that are wrong in one way each, and a runner.

The doctor is run as a user would run it, ``python -m mailslot doctor ... --json``, in a
subprocess; its JSON report and exit status are what the tests look at.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.support.faultypop3 import FaultyPop3

DOCTOR_DEADLINE = 120  # seconds for one doctor run; a hang guard, not a timing threshold


@dataclass(frozen=True)
class Outcome:
    status: int
    report: dict[str, Any]
    stdout: str
    stderr: str

    def checks(self, id: str, port: int | None = None) -> list[dict[str, Any]]:
        return [
            c
            for c in self.report["checks"]
            if c["id"] == id and (port is None or c["port"] == port)
        ]

    def status_of(self, id: str, port: int | None = None) -> str:
        found = self.checks(id, port)
        assert len(found) == 1, (id, port, found, self.stdout)
        return str(found[0]["status"])

    def statuses(self) -> dict[tuple[str, int | None], str]:
        return {(c["id"], c["port"]): c["status"] for c in self.report["checks"]}


def run_doctor(
    *args: str,
    stdin: str | None = None,
    json_output: bool = True,
    env: dict[str, str] | None = None,
) -> Outcome:
    command = [sys.executable, "-m", "mailslot", "doctor", *args]
    if json_output:
        command.append("--json")
    done = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=DOCTOR_DEADLINE,
        check=False,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env=None if env is None else {**os.environ, **env},
    )
    report = json.loads(done.stdout) if json_output and done.stdout.strip() else {}
    return Outcome(done.returncode, report, done.stdout, done.stderr)


@dataclass(frozen=True)
class Pki:
    root: trustme.CA
    intermediate: trustme.CA
    ca_pem: Path
    directory: Path

    def leaf(
        self,
        name: str,
        *identities: str,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        chain: bool = True,
    ) -> tuple[Path, Path]:
        """Write a leaf from the intermediate: (certificate file, key file)."""
        leaf = self.intermediate.issue_cert(
            *(identities or ("localhost", "127.0.0.1")),
            not_before=not_before,
            not_after=not_after,
        )
        blobs: Sequence[trustme.Blob] = leaf.cert_chain_pems if chain else leaf.cert_chain_pems[:1]
        certificate = self.directory / f"{name}.pem"
        certificate.write_bytes(b"".join(blob.bytes() for blob in blobs))
        key = self.directory / f"{name}-key.pem"
        leaf.private_key_pem.write_to_path(str(key))
        return certificate, key

    def self_signed(self, name: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256())
        )
        certificate = self.directory / f"{name}.pem"
        certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = self.directory / f"{name}-key.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return certificate, key_path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("doctor-pki")
    root = trustme.CA(organization_name="doctor tests root")
    intermediate = root.create_child_ca()
    ca_pem = directory / "ca.pem"
    root.cert_pem.write_to_path(str(ca_pem))
    return Pki(root, intermediate, ca_pem, directory)


@pytest.fixture
def faulty(pki: Pki) -> Iterator[Any]:
    """``faulty(cert_name="good", **FaultyPop3 options)`` -> a running wrong server."""
    servers: list[FaultyPop3] = []

    def make(certificate: tuple[Path, Path] | None = None, **options: Any) -> FaultyPop3:
        cert, key = certificate or pki.leaf("good")
        server = FaultyPop3(cert, key, **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def doctor_args(
    server: FaultyPop3, pki: Pki, host: str = "localhost", *, groups: bool = False
) -> list[str]:
    """The doctor's arguments for ``server``; the group probe (a dozen ``openssl s_client``
    runs) only where a test looks at groups."""
    return [
        *([] if groups else ["--no-groups"]),
        host,
        "--port",
        str(server.implicit_port),
        "--stls-port",
        str(server.stls_port),
        "--cafile",
        str(pki.ca_pem),
    ]
