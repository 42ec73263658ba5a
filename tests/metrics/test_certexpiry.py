"""mailslot.certexpiry without a server: what a load records (the chain's earliest notAfter,
the subjectAltNames, one entry per file), the snapshot replaced whole and readable whatever
the umask, and the exposition text it gives (``promtool check metrics``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.programs import require_program
from tests.tls.certmaker import DAY, NOW, issue, pki, write

from mailslot import certexpiry
from mailslot.tls.certificates import KeyPair, Loaded, load_pairs


def load(*pairs: tuple[Path, Path]) -> list[Loaded]:
    loaded, findings = load_pairs([KeyPair(f"p{n}", c, k) for n, (c, k) in enumerate(pairs)])
    assert len(loaded) == len(pairs), findings
    return loaded


def test_the_value_is_the_earliest_expiry_of_the_chain(tmp_path: Path) -> None:
    ca = pki(tmp_path)
    leaf = ca.leaf("mail.example.org", not_after=NOW + 60 * DAY)
    late = write(tmp_path / "late", leaf, ca.intermediate)  # the intermediate: 30 days
    early = write(tmp_path / "early", ca.leaf("a.example.org", not_after=NOW + 5 * DAY))
    entries = certexpiry.served(load(late, early))
    assert [(e.certificate, e.not_after) for e in entries] == [
        (str(late[0]), ca.intermediate.cert.not_valid_after_utc.timestamp()),
        (str(early[0]), (NOW + 5 * DAY).replace(microsecond=0).timestamp()),
    ]


def test_names_and_key_type_label_each_file_once(tmp_path: Path) -> None:
    ca = pki(tmp_path)
    rsa = issue("mail.example.org", ca.intermediate, kind="rsa", names=("mail.example.org",))
    ecdsa = write(tmp_path / "e", ca.leaf("mail.example.org", "*.example.org"), ca.intermediate)
    rsa_files = write(tmp_path / "r", rsa, ca.intermediate)
    entries = certexpiry.served(load(ecdsa, rsa_files, ecdsa))  # a file named twice
    assert [(e.certificate, e.names, e.key_type) for e in entries] == [
        (str(ecdsa[0]), "mail.example.org,*.example.org", "ecdsa"),
        (str(rsa_files[0]), "mail.example.org", "rsa"),
    ]


def test_a_snapshot_replaces_the_last_whole_and_is_readable_by_all(tmp_path: Path) -> None:
    ca = pki(tmp_path / "ca")
    first = write(tmp_path / "a", ca.leaf("a.example.org"), ca.intermediate)
    second = write(tmp_path / "b", ca.leaf("b.example.org"), ca.intermediate)
    directory = tmp_path / "metrics"
    directory.mkdir()
    assert certexpiry.read(directory) == []
    assert certexpiry.family(directory) is None  # no certificate: no family at all
    umask = os.umask(0o077)  # as under systemd's UMask=0077
    try:
        certexpiry.write(directory, load(first, second))
        certexpiry.write(directory, load(second))
    finally:
        os.umask(umask)
    assert [e.certificate for e in certexpiry.read(directory)] == [str(second[0])]
    assert (directory / certexpiry.SNAPSHOT).stat().st_mode & 0o777 == 0o644
    assert os.listdir(directory) == [certexpiry.SNAPSHOT]  # no temporary file left


def test_a_snapshot_that_cannot_be_written_or_read_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = pki(tmp_path / "ca")
    pair = write(tmp_path / "a", ca.leaf("a.example.org"), ca.intermediate)
    certexpiry.write(tmp_path / "missing", load(pair))  # no directory: logged, not raised
    (tmp_path / certexpiry.SNAPSHOT).write_text('{"not": "a list"}')
    assert certexpiry.read(tmp_path) == []
    assert "cannot record the certificates' expiry" in caplog.text
    assert "is not a snapshot of certificates" in caplog.text


def test_the_exposition_passes_promtool(tmp_path: Path) -> None:
    ca = pki(tmp_path / "ca")
    pair = write(tmp_path / "a", ca.leaf("a.example.org", "b.example.org"), ca.intermediate)
    certexpiry.write(tmp_path, load(pair))
    gauge = certexpiry.family(tmp_path)
    registry = CollectorRegistry()

    class Collector:
        def collect(self) -> list[object]:
            return [gauge]

    registry.register(Collector())  # type: ignore[arg-type]
    text = generate_latest(registry)
    (family,) = text_string_to_metric_families(text.decode())
    assert family.type == "gauge"
    assert [(sample.labels, sample.value) for sample in family.samples] == [
        (
            {
                "certificate": str(pair[0]),
                "names": "a.example.org,b.example.org",
                "key_type": "ecdsa",
            },
            (NOW + 30 * DAY).replace(microsecond=0).timestamp(),
        )
    ]
    promtool = require_program("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
