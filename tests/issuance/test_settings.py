"""``[acme]`` in the configuration: defaults, and every check naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailslot.config import ConfigError, loads
from mailslot.tls.acme.settings import domains, zone_for

BASE = (
    '[[listener]]\nport = 995\ntls = "implicit"\n'
    '[tls]\ncertificate = "/nonexistent/fullchain.pem"\nprivate_key = "/nonexistent/key.pem"\n'
    '[auth]\npasswd_file = "users"\n[server]\nhostname = "Mail.Example.org"\n'
)


def problems(acme: str, base: str = BASE) -> list[str]:
    try:
        loads(base + "[acme]\nenabled = true\n" + acme, Path("/etc/mailslot/mailslot.toml"))
    except ConfigError as error:
        return [
            f"{p.key}: {p.message}" for p in error.problems if p.key.startswith(("acme", "tls"))
        ]
    return []


def test_defaults_and_names() -> None:
    config = loads(
        BASE + '[acme]\nenabled = true\ndomains = ["pop.example.org", "mail.example.org"]\n',
        check_files=False,
    )
    assert config.acme.directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert config.acme.challenge == "http-01" and config.acme.http_port == 80
    assert config.acme.http_address == "*"
    assert config.acme.key_type == "ecdsa-p256"
    assert config.acme.state_directory == Path("/var/lib/mailslot/acme")
    assert domains(config) == ["mail.example.org", "pop.example.org"]
    assert zone_for(config.acme, "mail.example.org") == "example.org"


def test_the_tls_files_need_not_exist_with_acme_on() -> None:
    # ACME writes them (a bootstrap certificate first): no "does not exist" problem.
    assert problems("") == []


def test_each_problem_names_its_key() -> None:
    assert problems('directory = "http://ca.example/dir"') == [
        'acme.directory: must be the CA\'s https:// directory URL, not "http://ca.example/dir" '
        "(Let's Encrypt: the default; its staging: "
        "https://acme-staging-v02.api.letsencrypt.org/directory)"
    ]
    assert problems('domains = ["*.example.org"]') == [
        'acme.domains: "*.example.org" is not a DNS name a CA can certify '
        '(wildcards need challenge = "dns-01")'
    ]
    assert problems('challenge = "dns-01"') == [
        'acme.dns_server: is required with challenge = "dns-01": the address of the primary '
        "server that takes RFC 2136 updates for the zone"
    ]
    found = problems(
        'challenge = "dns-01"\ndns_server = "192.0.2.53"\ntsig_key_name = "k."\n'
        'tsig_algorithm = "md5"'
    )
    assert found == [
        "acme.tsig_secret_file: give tsig_key_name and tsig_secret_file together (RFC 8945 TSIG)",
        "acme.tsig_algorithm: must be one of hmac-sha256, hmac-sha384, hmac-sha512, hmac-sha224, "
        'hmac-sha1, not "md5"',
    ]
    assert problems("http_port = 0\nretry_initial = 10.0\nretry_max = 5.0") == [
        "acme.http_port: must be between 1 and 65535, not 0",
        "acme.retry_max: must be at least retry_initial (10), not 5",
    ]
    assert problems('http_address = "localhost"') == [
        'acme.http_address: "localhost" is not an IPv4 or IPv6 address; "*" is every address'
    ]
    assert problems('challenge = "dns-02"') == [
        'acme.challenge: must be one of "http-01", "tls-alpn-01", "dns-01", not "dns-02"'
    ]


def test_acme_needs_the_tls_paths_it_writes_to() -> None:
    base = '[[listener]]\nport = 995\ntls = "implicit"\n[auth]\npasswd_file = "users"\n'
    assert problems("", base) == [
        "tls.certificate: is required with [acme] enabled: name the file ACME writes to",
        "tls.private_key: is required with [acme] enabled: name the file ACME writes to",
    ]


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072"])
def test_key_types(key_type: str) -> None:
    assert problems(f'key_type = "{key_type}"') == []
