"""``mailslot acme issue|renew|status`` against a private pebble: TLS-ALPN-01 (RFC 8737)
answered on the responder's own port, DNS-01 (RFC 8555 section 8.4) through TSIG-signed
RFC 2136 updates to the test DNS server (a wildcard name included), a refused update
reported as a failure, and ``status`` showing what was done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from tests.issuance.conftest import PebbleFactory
from tests.issuance.test_server_acme import acme_section
from tests.support.dnsserver import TSIG_NAME, TSIG_SECRET, DnsState
from tests.support.pebble import Pebble
from tests.support.server import RUN_AS_ROOT, toml_table

TIMEOUT = 120  # seconds for one command; a hang fails rather than blocks the suite


def write_config(directory: Path, acme: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = toml_table(
        "listener", {"address": "127.0.0.1", "port": 1995, "tls": "implicit"}, array=True
    )
    text += toml_table(
        "tls",
        {
            "certificate": str(directory / "fullchain.pem"),
            "private_key": str(directory / "privkey.pem"),
        },
    )
    text += toml_table("auth", {"passwd_file": "users"})  # not read by `acme`
    root = {"run_as_root": RUN_AS_ROOT} if os.geteuid() == 0 else {}
    text += toml_table("server", {"hostname": "mail.example.test"} | root)
    text += toml_table("acme", acme)
    path = directory / "mailslot.toml"
    path.write_text(text)
    return path


def acme(action: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailslot", "acme", action, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def verified(chain_pem: bytes, pebble: Pebble, name: str) -> x509.Certificate:
    """The leaf of ``chain_pem``, verified for ``name`` against pebble's root."""
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
    roots = x509.load_pem_x509_certificates(pebble.root_pem())
    verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName(name))
    verifier.verify(leaf, intermediates)
    return leaf


def san(leaf: x509.Certificate) -> list[str]:
    value = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(value.get_values_for_type(x509.DNSName))


def test_issue_over_tls_alpn_01_then_status(tmp_path: Path, pebble_factory: PebbleFactory) -> None:
    pebble = pebble_factory()
    settings = acme_section(pebble, tmp_path / "state", challenge="tls-alpn-01", domains=[])
    config = write_config(tmp_path / "server", settings)
    result = acme("issue", config)
    assert result.returncode == 0, result.stderr
    assert "TLS-ALPN-01 challenge answered" in result.stderr
    leaf = verified(
        (tmp_path / "server" / "fullchain.pem").read_bytes(), pebble, "mail.example.test"
    )
    assert san(leaf) == ["mail.example.test"]

    status = acme("status", config)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["state"] == "ok"
    assert shown["certificate"]["names"] == ["mail.example.test"]
    assert shown["certificate"]["self_signed"] is False

    # Nothing is due: issue leaves the certificate alone; renew replaces it.
    assert acme("issue", config).returncode == 0
    assert (tmp_path / "server" / "fullchain.pem").read_bytes().startswith(b"-----BEGIN")
    unchanged = verified(
        (tmp_path / "server" / "fullchain.pem").read_bytes(), pebble, "mail.example.test"
    )
    assert unchanged.serial_number == leaf.serial_number
    assert acme("renew", config).returncode == 0
    renewed = verified(
        (tmp_path / "server" / "fullchain.pem").read_bytes(), pebble, "mail.example.test"
    )
    assert renewed.serial_number != leaf.serial_number


def dns_settings(pebble: Pebble, dns: DnsState, state: Path, secret: str) -> dict[str, Any]:
    secret_file = state.parent / "tsig.key"
    secret_file.write_text(secret + "\n")
    return acme_section(
        pebble,
        state,
        challenge="dns-01",
        domains=["*.example.test"],
        dns_server="127.0.0.1",
        dns_port=dns.port,
        dns_zone="example.test",
        tsig_key_name=TSIG_NAME,
        tsig_secret_file=str(secret_file),
        tsig_algorithm="hmac-sha256",
    )


def test_issue_over_dns_01_with_rfc2136_updates(
    tmp_path: Path, pebble_factory: PebbleFactory, dns: DnsState
) -> None:
    pebble = pebble_factory()
    config = write_config(
        tmp_path / "server", dns_settings(pebble, dns, tmp_path / "state", TSIG_SECRET)
    )
    result = acme("issue", config)
    assert result.returncode == 0, result.stderr
    chain = (tmp_path / "server" / "fullchain.pem").read_bytes()
    leaf = verified(chain, pebble, "mail.example.test")
    assert san(leaf) == ["*.example.test", "mail.example.test"]
    verified(chain, pebble, "pop.example.test")  # the wildcard
    # Each TXT record was added, then removed once the order was done.
    for name in ("_acme-challenge.mail.example.test.", "_acme-challenge.example.test."):
        assert any(u.startswith(f"add {name} ") for u in dns.updates), dns.updates
        assert any(u.startswith(f"delete {name} ") for u in dns.updates), dns.updates
    assert not any(dns.txt.values())
    assert dns.refused == 0


def test_a_refused_dns_update_fails_the_order_and_is_recorded(
    tmp_path: Path, pebble_factory: PebbleFactory, dns: DnsState
) -> None:
    pebble = pebble_factory()
    wrong = "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZyE="
    state = tmp_path / "state"
    config = write_config(tmp_path / "server", dns_settings(pebble, dns, state, wrong))
    result = acme("issue", config)
    assert result.returncode == 1
    assert "RFC 2136 update of _acme-challenge" in result.stderr
    assert "Traceback" not in result.stderr
    assert dns.refused >= 1 and not dns.updates
    status = json.loads((state / "status.json").read_text())
    assert status["state"] == "failing" and status["failures"] == 1
    # The bootstrap certificate is what there is meanwhile.
    bootstrap = x509.load_pem_x509_certificate((tmp_path / "server" / "fullchain.pem").read_bytes())
    assert bootstrap.issuer == bootstrap.subject


def test_check_config_passes_before_acme_wrote_the_files(tmp_path: Path) -> None:
    settings = {"enabled": True, "state_directory": str(tmp_path / "state")}
    config = write_config(tmp_path / "server", settings)
    (tmp_path / "server" / "users").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "mailslot", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "does not exist yet: [acme] will write it" in result.stderr
