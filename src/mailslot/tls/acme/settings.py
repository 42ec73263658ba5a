"""The ``[acme]`` settings' checks (docs/configuration.md) and the names to certify.

:mod:`mailslot.config` calls :func:`problems` while it validates a file, so every message
names its key (``acme.<key>``) and says what would be accepted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailslot.config import AcmeConfig, Config

# RFC 1035 section 2.3.1 labels (letters, digits, hyphens), as CAs accept them.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")
STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


def domains(config: Config) -> list[str]:
    """``[server] hostname`` and then ``[acme] domains``, lower-cased, each once."""
    names: list[str] = []
    for name in (config.server.hostname, *config.acme.domains):
        name = name.lower().rstrip(".")
        if name not in names:
            names.append(name)
    return names


def is_dns_name(name: str, *, wildcard: bool = False) -> bool:
    if wildcard and name.startswith("*."):
        name = name[2:]
    labels = name.split(".")
    return len(name) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def zone_for(acme: AcmeConfig, name: str) -> str:
    """The zone a DNS-01 record for ``name`` is updated in: ``dns_zone``, or ``name``
    without its first label (``example.org`` for ``mail.example.org``)."""
    if acme.dns_zone is not None:
        return acme.dns_zone.rstrip(".")
    bare = name[2:] if name.startswith("*.") else name
    return bare.partition(".")[2] or bare


def problems(config: Config, *, check_files: bool = True) -> Iterator[tuple[str, str]]:
    """``(key, message)`` for each thing wrong with ``[acme]``; nothing when it is off."""
    acme = config.acme
    if not acme.enabled:
        return
    if not acme.directory.startswith("https://"):
        yield (
            "directory",
            f'must be the CA\'s https:// directory URL, not "{acme.directory}" '
            f"(Let's Encrypt: the default; its staging: {STAGING})",
        )
    for name in domains(config):
        if not is_dns_name(name, wildcard=acme.challenge == "dns-01"):
            key = "domains" if name != config.server.hostname.lower() else "challenge"
            hint = ' (wildcards need challenge = "dns-01")' if name.startswith("*.") else ""
            yield (key, f'"{name}" is not a DNS name a CA can certify{hint}')
    if acme.email is not None and "@" not in acme.email:
        yield ("email", f'"{acme.email}" is not an e-mail address')
    for key in ("http_port", "tls_alpn_port", "dns_port"):
        value = getattr(acme, key)
        if not 1 <= value <= 65535:
            yield (key, f"must be between 1 and 65535, not {value}")
    for key in ("http_address", "tls_alpn_address"):
        value = getattr(acme, key)
        if value != "*" and not _is_ip(value):
            yield (key, f'"{value}" is not an IPv4 or IPv6 address; "*" is every address')
    if acme.retry_initial <= 0:
        yield ("retry_initial", f"must be more than 0 seconds, not {acme.retry_initial:g}")
    if acme.retry_max < acme.retry_initial:
        yield (
            "retry_max",
            f"must be at least retry_initial ({acme.retry_initial:g}), not {acme.retry_max:g}",
        )
    if not config.listeners or all(lst.tls == "none" for lst in config.listeners):
        yield ("enabled", "no listener uses TLS, so no certificate is needed")
    if acme.challenge == "dns-01":
        yield from _dns_problems(acme, check_files)
    if acme.ca_bundle is not None and check_files and not acme.ca_bundle.is_file():
        yield ("ca_bundle", f"{acme.ca_bundle} does not exist or is not a file")


def _dns_problems(acme: AcmeConfig, check_files: bool) -> Iterator[tuple[str, str]]:
    if acme.dns_server is None:
        yield (
            "dns_server",
            'is required with challenge = "dns-01": the address of the primary server that '
            "takes RFC 2136 updates for the zone",
        )
    if (acme.tsig_key_name is None) != (acme.tsig_secret_file is None):
        missing = "tsig_secret_file" if acme.tsig_secret_file is None else "tsig_key_name"
        yield (missing, "give tsig_key_name and tsig_secret_file together (RFC 8945 TSIG)")
    if acme.tsig_algorithm not in TSIG_ALGORITHMS:
        yield (
            "tsig_algorithm",
            f'must be one of {", ".join(TSIG_ALGORITHMS)}, not "{acme.tsig_algorithm}"',
        )
    secret = acme.tsig_secret_file
    if secret is not None and check_files and not secret.is_file():
        yield (
            "tsig_secret_file",
            f"{secret} does not exist or is not a file; it should hold the base64 TSIG secret",
        )
