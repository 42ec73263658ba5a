"""DNS-01 (RFC 8555 section 8.4) through DNS dynamic updates (RFC 2136), signed with TSIG
(RFC 8945), sent with dnspython.

For each name the record ``_acme-challenge.NAME. 60 IN TXT "<digest>"`` is added to the zone
on ``[acme] dns_server`` before the challenge is answered, and deleted (that value only, RFC
2136 section 2.5.4) once the order is done, valid or not.  The update goes to the primary
server named in the settings, so the CA's lookup finds it there at once; secondaries that are
slow to follow can make a validation fail, which is then retried as any failure.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update

from mailslot.config import AcmeConfig
from mailslot.tls.acme.settings import zone_for

logger = logging.getLogger("mailslot.acme")

TTL = 60
_TIMEOUT = 10.0


class DnsUpdateError(Exception):
    """The server refused an update or did not answer."""


class Rfc2136:
    """Adds and removes the ``_acme-challenge`` TXT records of ``[acme]``."""

    def __init__(self, acme: AcmeConfig) -> None:
        assert acme.dns_server is not None
        self.acme = acme
        self.server = acme.dns_server
        self.port = acme.dns_port
        self.keyring: dict[dns.name.Name, dns.tsig.Key] | None = None
        self.key_name: dns.name.Name | None = None
        if acme.tsig_key_name is not None and acme.tsig_secret_file is not None:
            secret = _read_secret(acme.tsig_secret_file)
            self.key_name = dns.name.from_text(acme.tsig_key_name)
            self.keyring = {self.key_name: dns.tsig.Key(self.key_name, secret, acme.tsig_algorithm)}

    def add(self, record: str, domain: str, value: str) -> None:
        self._send(record, domain, value, add=True)

    def remove(self, record: str, domain: str, value: str) -> None:
        self._send(record, domain, value, add=False)

    def _send(self, record: str, domain: str, value: str, *, add: bool) -> None:
        zone = zone_for(self.acme, domain)
        update = dns.update.UpdateMessage(zone, keyring=self.keyring, keyname=self.key_name)
        name = dns.name.from_text(record)
        if add:
            update.add(name, TTL, "TXT", f'"{value}"')
        else:
            update.delete(name, "TXT", f'"{value}"')
        try:
            response = dns.query.tcp(update, self.server, timeout=_TIMEOUT, port=self.port)
        except (OSError, dns.exception.DNSException) as exc:
            raise DnsUpdateError(
                f"RFC 2136 update of {record} to {self.server} port {self.port} failed: {exc}"
            ) from exc
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise DnsUpdateError(
                f"{self.server} refused the update of {record} in zone {zone}: "
                f"{dns.rcode.to_text(rcode)}"
            )
        logger.info("acme: DNS-01 record %s %s", record, "added" if add else "removed")


def _read_secret(path: Path) -> bytes:
    """The TSIG secret: base64 (as ``tsig-keygen`` and ``ddns-confgen`` print it)."""
    text = path.read_text(encoding="ascii").strip()
    if text.startswith("secret"):  # a BIND key clause's line: secret "…";
        text = text.split('"')[1]
    return base64.b64decode(text, validate=True)
