"""The doctor's report as text for people and as JSON for programs (docs/doctor.md).

JSON schema (``"schema": 1``; fields are only ever added, never renamed or removed within a
schema version)::

    {"schema": 1, "host": str, "port": int, "stls_port": int, "config": str | null,
     "exit_status": 0 | 1 | 2, "unreachable": str | null,
     "counts": {"ok": int, "warning": int, "failure": int},
     "checks": [{"id": str, "port": int | null, "status": "ok" | "warning" | "failure",
                 "summary": str, "fix": str | null, "details": {str: value}}]}
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from mailslot.doctor.results import Report, Status

SCHEMA_VERSION = 1
_MARK = {Status.OK: "ok     ", Status.WARNING: "warning", Status.FAILURE: "FAILURE"}


def as_dict(report: Report) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "host": report.host,
        "port": report.port,
        "stls_port": report.stls_port,
        "config": report.config,
        "exit_status": report.exit_status,
        "unreachable": report.unreachable,
        "counts": {status.value: report.count(status) for status in Status},
        "checks": [
            {
                "id": check.id,
                "port": check.port,
                "status": check.status.value,
                "summary": check.summary,
                "fix": check.fix,
                "details": dict(check.details),
            }
            for check in report.checks
        ],
    }


def write_json(report: Report, out: TextIO) -> None:
    json.dump(as_dict(report), out, indent=2)
    out.write("\n")


def _clean(text: str) -> str:
    # Server-supplied text (replies, certificate names) may hold control characters.
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def write_text(report: Report, out: TextIO) -> None:
    local = f", local checks from {report.config}" if report.config is not None else ""
    out.write(
        f"mailslot doctor {report.host} (POP3S {report.port}, STLS {report.stls_port}{local})\n"
    )
    for check in report.checks:
        where = f"[{check.port}] " if check.port is not None else ""
        out.write(f"{_MARK[check.status]} {check.id:<22} {where}{_clean(check.summary)}\n")
        if check.fix is not None:
            out.write(f"{'':8} {'':<22} fix: {_clean(check.fix)}\n")
    counts = ", ".join(f"{report.count(status)} {status.value}" for status in Status)
    if report.unreachable is not None:
        out.write(f"could not check {report.host}: {report.unreachable} ({counts})\n")
    else:
        out.write(f"{counts}\n")
