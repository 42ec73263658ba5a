"""``mailslot doctor --config``: the host's side (mailslot.hostcheck, docs/doctor.md).

Unit tests read status files written by the ACME code's own writer
(:class:`mailslot.tls.acme.state.StateDirectory`), as the renewal loop leaves them after a
success, a failing order, a rate limit and an account the CA refuses.  The integration tests
run a real mailslot and the doctor as a user runs it.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.doctor.conftest import run_doctor
from tests.support.dropped import USER, require_importable_as, shared_directory
from tests.support.server import ServerFactory, free_port, toml_table
from tests.support.tls import TlsFiles, make_tls_files

from mailslot import hostcheck
from mailslot.config import AcmeConfig, Config, TlsConfig
from mailslot.doctor.results import Check, Status
from mailslot.tls.acme.state import StateDirectory

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)


def _iso(delta: datetime.timedelta) -> str:
    return (NOW + delta).isoformat(timespec="seconds")


def _config(tmp_path: Path, tls: TlsConfig | None = None) -> Config:
    state = tmp_path / "acme"
    return Config(
        acme=AcmeConfig(enabled=True, state_directory=state),
        tls=tls or TlsConfig(),
        source=tmp_path / "mailslot.toml",
    )


def _checks(tmp_path: Path, **status: Any) -> list[Check]:
    config = _config(tmp_path)
    if status:
        StateDirectory(config.acme.state_directory).update_status(**status)
    return hostcheck.checks(config, {}, NOW)


def _only(checks: list[Check]) -> Check:
    assert len(checks) == 1, checks
    return checks[0]


def test_success_shows_last_success_and_next_renewal(tmp_path: Path) -> None:
    check = _only(
        _checks(
            tmp_path,
            state="ok",
            names=["pop.example.org"],
            not_after=_iso(datetime.timedelta(days=80)),
            renew_at=_iso(datetime.timedelta(days=50)),
            issued=_iso(-datetime.timedelta(days=10)),
            last_error=None,
            failures=0,
            next_attempt=None,
            rate_limited=False,
        )
    )
    assert (check.id, check.status) == ("acme.status", Status.OK)
    assert "last success 2026-11-27 12:00:00 UTC" in check.summary
    assert "next renewal at 2027-01-26 12:00:00 UTC" in check.summary
    assert "pop.example.org" in check.summary


def test_overdue_renewal_is_a_warning(tmp_path: Path) -> None:
    checks = _checks(
        tmp_path,
        state="ok",
        names=["pop.example.org"],
        not_after=_iso(datetime.timedelta(days=5)),
        renew_at=_iso(-datetime.timedelta(days=20)),
        checked=_iso(-datetime.timedelta(days=21)),
    )
    assert [(c.id, c.status) for c in checks] == [
        ("acme.status", Status.OK),
        ("acme.renewal", Status.WARNING),
    ]


def test_failing_order_is_a_failure_with_the_error_and_the_retry(tmp_path: Path) -> None:
    check = _only(
        _checks(
            tmp_path,
            state="failing",
            not_after=_iso(datetime.timedelta(days=40)),
            last_error="validation failed: pop.example.org: Connection refused",
            failures=3,
            rate_limited=False,
            account_problem=False,
            next_attempt=_iso(datetime.timedelta(minutes=8)),
        )
    )
    assert (check.id, check.status) == ("acme.order", Status.FAILURE)
    assert "validation failed: pop.example.org: Connection refused" in check.summary
    assert "next try at 2026-12-07 12:08:00 UTC" in check.summary
    assert check.details["failures"] == 3
    assert check.fix is not None


def test_rate_limit_is_a_warning_while_the_certificate_lasts(tmp_path: Path) -> None:
    check = _only(
        _checks(
            tmp_path,
            state="failing",
            not_after=_iso(datetime.timedelta(days=40)),
            last_error="rate limited by the CA: too many certificates",
            failures=1,
            rate_limited=True,
            next_attempt=_iso(datetime.timedelta(hours=3)),
        )
    )
    assert (check.id, check.status) == ("acme.rate-limit", Status.WARNING)
    assert "next try at 2026-12-07 15:00:00 UTC (its Retry-After)" in check.summary
    assert "too many certificates" in check.summary


def test_rate_limit_near_expiry_is_a_failure(tmp_path: Path) -> None:
    check = _only(
        _checks(
            tmp_path,
            state="failing",
            not_after=_iso(datetime.timedelta(days=3)),
            last_error="rate limited by the CA: too many certificates",
            rate_limited=True,
            next_attempt=_iso(datetime.timedelta(hours=3)),
        )
    )
    assert (check.id, check.status) == ("acme.rate-limit", Status.FAILURE)


def test_account_problem(tmp_path: Path) -> None:
    check = _only(
        _checks(
            tmp_path,
            state="failing",
            last_error="the CA refused: urn:ietf:params:acme:error:userActionRequired",
            rate_limited=False,
            account_problem=True,
            next_attempt=_iso(datetime.timedelta(hours=1)),
        )
    )
    assert (check.id, check.status) == ("acme.account", Status.FAILURE)
    assert "userActionRequired" in check.summary


def test_no_status_yet(tmp_path: Path) -> None:
    check = _only(_checks(tmp_path))
    assert (check.id, check.status) == ("acme.status", Status.WARNING)


def test_unreadable_state_directory_says_run_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, which reads any directory: the permission error is made here.
    def refuse(self: StateDirectory) -> dict[str, Any]:
        raise PermissionError(13, "Permission denied", str(self.status_file))

    monkeypatch.setattr(StateDirectory, "status", refuse)
    check = _only(_checks(tmp_path))
    assert (check.id, check.status) == ("acme.state", Status.WARNING)
    assert check.fix is not None and "run as root" in check.fix


def test_acme_off_reads_no_state(tmp_path: Path) -> None:
    config = Config(source=tmp_path / "mailslot.toml")
    assert hostcheck.checks(config, {}, NOW) == []


def test_certificate_files_through_check_configs_checks(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    files.private_key.chmod(0o600)
    other = make_tls_files(tmp_path / "other")
    # A key that is not the certificate's: check-config's error, naming both files.
    config = Config(
        tls=TlsConfig(certificate=files.certificate, private_key=other.private_key),
        source=tmp_path / "mailslot.toml",
    )
    checks = hostcheck.certificate_checks(config, NOW)
    failures = [c for c in checks if c.status is Status.FAILURE]
    assert failures, checks
    assert str(other.private_key) in failures[0].summary
    assert str(files.certificate) in failures[0].summary
    assert failures[0].details["key"] == "tls.private_key"


def _serve_copy(tmp_path: Path, mailslot_factory: ServerFactory) -> tuple[Any, TlsFiles]:
    """A server whose [tls] files are copies this test may replace; no automatic reload."""
    files = make_tls_files(tmp_path / "served")
    files.private_key.chmod(0o600)
    server = mailslot_factory(tls=files, tls_options={"reload_check_interval": 0})
    return server, files


def test_served_certificate_matches_the_file(
    tmp_path: Path, mailslot_factory: ServerFactory
) -> None:
    server, files = _serve_copy(tmp_path, mailslot_factory)
    # HOST and the ports come from the configuration.
    outcome = run_doctor("--config", str(server.config_path), "--cafile", str(files.ca_pem))
    assert outcome.report["config"] == str(server.config_path)
    assert outcome.report["port"] == server.implicit[1]
    assert outcome.report["stls_port"] == server.starttls[1]
    served = outcome.checks("local.served")
    assert [c["status"] for c in served] == ["ok", "ok"], outcome.stdout
    # check-config's findings on the files: they load; trustme's private CA and its
    # long-lived leaf draw check-config's warnings, which are not failures.
    local_tls = outcome.checks("local.tls")
    assert local_tls[0]["status"] == "ok"
    assert all(c["status"] != "failure" for c in local_tls)
    assert any("lifetime" in c["summary"] for c in local_tls)
    assert outcome.status == 0, outcome.stdout


def test_replaced_file_not_reloaded_is_a_failure(
    tmp_path: Path, mailslot_factory: ServerFactory
) -> None:
    server, files = _serve_copy(tmp_path, mailslot_factory)
    renewed = make_tls_files(tmp_path / "renewed")
    shutil.copyfile(renewed.private_key, files.private_key)
    shutil.copyfile(renewed.certificate, files.certificate)
    outcome = run_doctor(
        "localhost", "--config", str(server.config_path), "--cafile", str(files.ca_pem)
    )
    served = outcome.checks("local.served")
    assert [c["status"] for c in served] == ["failure", "failure"], outcome.stdout
    assert str(files.certificate) in served[0]["summary"]
    assert "reload" in served[0]["fix"]
    assert outcome.status == 1


def test_a_state_directory_only_root_reads_says_run_as_root() -> None:
    """For real: the doctor run as an unprivileged user on the 0700 directory root made."""
    require_importable_as(USER)
    with shared_directory() as directory:
        state = directory / "acme"
        StateDirectory(state).update_status(state="ok", renew_at=_iso(datetime.timedelta(1)))
        config = directory / "mailslot.toml"
        config.write_text(
            toml_table(
                "listener",
                {"address": "127.0.0.1", "port": free_port(), "tls": "implicit"},
                array=True,
            )
            + toml_table(
                "tls",
                {
                    "certificate": str(directory / "fullchain.pem"),
                    "private_key": str(directory / "privkey.pem"),
                },
            )
            + toml_table("auth", {"passwd_file": str(directory / "users")})
            + toml_table("store", {"maildir": str(directory / "{user}")})
            + toml_table("acme", {"enabled": True, "state_directory": str(state)}),
            encoding="utf-8",
        )
        config.chmod(0o644)
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
        assert runuser is not None
        doctor = ["doctor", "127.0.0.1", "--config", str(config), "--json", "--no-groups"]
        done = subprocess.run(
            [runuser, "-u", USER, "--", sys.executable, "-m", "mailslot", *doctor],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
            capture_output=True,
            text=True,
            cwd="/",
            timeout=120,
            check=False,
        )
    assert done.stdout, done.stderr
    report = json.loads(done.stdout)
    assert done.returncode == 2  # nothing listens: the local checks are made all the same
    (check,) = [c for c in report["checks"] if c["id"] == "acme.state"]
    assert check["status"] == "warning"
    assert "permission denied" in check["summary"]
    assert "run as root" in check["fix"]
