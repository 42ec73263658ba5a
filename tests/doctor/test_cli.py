"""``mailslot doctor``'s command line: JSON, exit statuses 2, argument checks, the schema."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

from tests.doctor.conftest import Pki, doctor_args, run_doctor

TOP_KEYS = {
    "schema",
    "host",
    "port",
    "stls_port",
    "config",
    "exit_status",
    "unreachable",
    "counts",
    "checks",
}
CHECK_KEYS = {"id", "port", "status", "summary", "fix", "details"}


def test_nothing_listening_exits_2() -> None:
    with socket.socket() as one, socket.socket() as two:
        # Bound without listen(): connections are refused for as long as the test holds them.
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        outcome = run_doctor(
            "127.0.0.1",
            "--port",
            str(one.getsockname()[1]),
            "--stls-port",
            str(two.getsockname()[1]),
            "--timeout",
            "2",
        )
    assert outcome.status == 2
    assert outcome.report["exit_status"] == 2
    assert outcome.report["unreachable"] == "no port answers"
    assert outcome.status_of("connect") == "failure"


def test_name_that_does_not_resolve_exits_2() -> None:
    # RFC 6761 section 6.4: .invalid never resolves.
    outcome = run_doctor("no-such-host.invalid")
    assert outcome.status == 2
    assert outcome.status_of("dns.resolve") == "failure"
    assert [c["id"] for c in outcome.report["checks"]] == ["dns.resolve"]


def test_json_schema_and_same_results_as_text(faulty: Any, pki: Pki) -> None:
    server = faulty(capa_plain=("UIDL", "USER", "STLS"))
    as_json = run_doctor(*doctor_args(server, pki))
    as_text = run_doctor(*doctor_args(server, pki), json_output=False)
    report = as_json.report
    assert set(report) == TOP_KEYS
    assert report["schema"] == 1
    assert report["port"] == server.implicit_port
    assert report["stls_port"] == server.stls_port
    assert report["exit_status"] == as_json.status == as_text.status == 1
    counts = {"ok": 0, "warning": 0, "failure": 0}
    for check in report["checks"]:
        assert set(check) == CHECK_KEYS
        assert check["status"] in counts
        assert (check["fix"] is None) == (check["status"] == "ok")
        counts[check["status"]] += 1
        json.dumps(check["details"])
    assert report["counts"] == counts
    # The text report has one line per check, in the same order, with the same status.
    lines = [line for line in as_text.stdout.splitlines()[1:-1] if not line.startswith(" ")]
    assert [line.split()[:2] for line in lines] == [
        [{"failure": "FAILURE"}.get(c["status"], c["status"]), c["id"]] for c in report["checks"]
    ]


def test_bad_arguments_are_usage_errors() -> None:
    for args in (["--port", "0", "h"], ["--timeout", "0", "h"], []):
        done = subprocess.run(
            [sys.executable, "-m", "mailslot", "doctor", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2
        assert "usage:" in done.stderr


def test_missing_cafile_is_reported() -> None:
    outcome = run_doctor("127.0.0.1", "--cafile", "/nonexistent/ca.pem", json_output=False)
    assert outcome.status == 2
    assert "/nonexistent/ca.pem" in outcome.stderr


def test_help_lists_doctor() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mailslot", "--help"], capture_output=True, text=True, check=True
    )
    assert "doctor" in done.stdout
