"""When each served certificate expires, for ``/metrics`` (docs/metrics.md).

``mailslot_certificate_expiry_timestamp_seconds`` has one series per configured certificate
file, labelled with its path, its subjectAltNames and its key type, so that an alert names the
certificate about to expire when several are served (SNI, an ECDSA and an RSA one side by
side).  Its value is the earliest ``notAfter`` of the chain in the file (RFC 5280 section
4.1.2.5): the leaf's, unless an intermediate the file holds expires first, as the
certificate checks' validity warning (:mod:`mailslot.tls.certificates`) has it.

The process that loads the certificates (the supervisor parent; a lone worker, which also
reloads them) hands what it loaded to :func:`write` at start and after every reload that
succeeded: a SIGHUP, or a change of the files, ACME's renewals included (docs/acme.md).
:func:`write` replaces ``certificates.json`` in the metrics directory whole (a rename), and
the worker that answers a scrape reads it back (:func:`family`).  Not a prometheus_client
gauge: in multiprocess mode each process's file keeps every label set ever written, with no
way to remove one, so a certificate renewed with other names or another key type would
leave its old series behind; and the worker that answers a scrape runs as ``[server] user``,
which often may not read the files (certbot's ``live/`` is root's), so it could not read
the dates itself.  The snapshot holds what was loaded last, one entry per file: nothing is
summed over workers and a series goes when its certificate does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

if TYPE_CHECKING:
    from mailslot.tls.certificates import Loaded

logger = logging.getLogger("mailslot")

NAME = "mailslot_certificate_expiry_timestamp_seconds"
SNAPSHOT = "certificates.json"  # in the metrics directory; the collector reads only *.db
_HELP = (
    "Earliest notAfter of the chain in each served certificate file (the leaf's unless an "
    "intermediate expires first), in seconds since the epoch."
)


@dataclass(frozen=True, slots=True)
class Served:
    """One certificate file as loaded: the labels of its series and its value."""

    certificate: str  # the file's path as configured
    names: str  # its subjectAltName DNS names and IP addresses, in its order, comma-separated
    key_type: str  # "ecdsa", "rsa" or "other"
    not_after: float  # seconds since the epoch


def _subject_alt_names(cert: x509.Certificate) -> list[str]:
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [
        str(name.value)
        for name in extension.value
        if isinstance(name, x509.DNSName | x509.IPAddress)
    ]


def served(loaded: Sequence[Loaded]) -> list[Served]:
    """What :func:`write` records of ``loaded``: one entry per file, the first where a file is
    configured twice (its series would otherwise be given twice, which Prometheus refuses)."""
    entries: dict[str, Served] = {}
    for item in loaded:
        path = str(item.pair.certificate)
        if path in entries:
            continue
        entries[path] = Served(
            certificate=path,
            names=",".join(_subject_alt_names(item.chain[0])),
            key_type=item.kind,
            not_after=min(cert.not_valid_after_utc.timestamp() for cert in item.chain),
        )
    return list(entries.values())


def write(directory: Path, loaded: Sequence[Loaded]) -> None:
    """Replace the snapshot in ``directory`` with ``loaded``; a failure is logged (the reload
    that called it has succeeded all the same)."""
    data = json.dumps([asdict(entry) for entry in served(loaded)]).encode()
    try:
        fd, temporary = tempfile.mkstemp(prefix=".certificates-", dir=directory)
        try:
            # Readable by the workers that answer scrapes whatever the umask (systemd's
            # UMask=0077) and whichever process wrote it (root, or [server] user).
            os.fchmod(fd, 0o644)
            os.write(fd, data)
        finally:
            os.close(fd)
        try:
            os.replace(temporary, directory / SNAPSHOT)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        logger.error("metrics: cannot record the certificates' expiry in %s: %s", directory, exc)


def read(directory: Path) -> list[Served]:
    """The snapshot in ``directory``; empty when none was written (no TLS certificate)."""
    try:
        text = (directory / SNAPSHOT).read_bytes()
    except FileNotFoundError:
        return []
    try:
        return [Served(**entry) for entry in json.loads(text)]
    except (ValueError, TypeError) as exc:  # not written by write(): nothing to show
        logger.error("metrics: %s is not a snapshot of certificates: %s", directory / SNAPSHOT, exc)
        return []


def family(directory: Path) -> Any | None:
    """The gauge family of the snapshot in ``directory`` (a prometheus_client
    ``GaugeMetricFamily``), or None when there is no certificate."""
    entries = read(directory)
    if not entries:
        return None
    from prometheus_client.core import GaugeMetricFamily

    gauge = GaugeMetricFamily(NAME, _HELP, labels=["certificate", "names", "key_type"])
    for entry in entries:
        gauge.add_metric([entry.certificate, entry.names, entry.key_type], entry.not_after)
    return gauge
