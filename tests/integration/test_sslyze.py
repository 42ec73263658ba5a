"""sslyze's check against Mozilla's Server Side TLS profiles, on both listener kinds.

A real scan of a real server: ``sslyze --mozilla_config intermediate`` (and ``modern`` with
``[tls] profile = "modern"``) against the implicit-TLS listener and, with ``--starttls pop3``,
the STLS one.  The certificate is the quick start's (ECDSA P-256, 365 days, its private CA
given to sslyze as a trust store), so the scan also shows that the quick start's setup is
clean apart from trust in that CA.  (trustme's certificates are not used: their critical
subjectAltName beside a subject fails the strict RFC 5280 path validation sslyze does.)
"""

from __future__ import annotations

import datetime
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.programs import in_ci
from tests.support.server import ServerFactory
from tests.support.tls import TlsFiles

from mailslot import quickstart

pytestmark = pytest.mark.slow

SCAN_DEADLINE = 300  # seconds; a safety net for a hung scan, not a threshold


def sslyze() -> list[str]:
    if importlib.util.find_spec("sslyze") is not None:
        return [sys.executable, "-m", "sslyze"]
    found = shutil.which("sslyze")
    if found is not None:
        return [found]
    message = "sslyze is not installed (it is in the test extra: pip install '.[test]')"
    if in_ci():
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


@pytest.mark.parametrize("profile", ["intermediate", "modern"])
def test_both_listeners_comply_with_the_profile(
    mailslot_factory: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    profile: str,
) -> None:
    command = sslyze()
    if profile == "modern":  # sslyze's modern check wants certificates of under 90 days
        monkeypatch.setattr(quickstart, "VALIDITY", datetime.timedelta(days=89))
    quickstart.ensure_certificates(tmp_path)
    files = TlsFiles(tmp_path / "ca.pem", tmp_path / "fullchain.pem", tmp_path / "privkey.pem")
    server = mailslot_factory(tls=files, tls_profile=None if profile == "intermediate" else profile)
    for tls_mode, extra in (("implicit", []), ("starttls", ["--starttls", "pop3"])):
        host, port = server.listener(tls_mode)
        result = subprocess.run(
            [
                *command,
                f"--mozilla_config={profile}",
                f"--certinfo_ca_file={files.ca_pem}",
                *extra,
                f"{host}:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=SCAN_DEADLINE,
            check=False,
        )
        report = result.stdout + result.stderr
        assert f'against Mozilla\'s "{profile}" configuration' in report, report
        assert f"{host}:{port}: OK - Compliant" in report, report
        assert result.returncode == 0, report
