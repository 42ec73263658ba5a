"""Results of the doctor's checks: one :class:`Check` per finding, and the exit status.

A check has a stable ``id`` (documented in docs/doctor.md and emitted in ``--json``), the port
it concerns (or ``None``), a :class:`Status`, a one-line summary of what was found and, unless
it is ok, how to fix it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANNOT_CHECK = 2


class Status(enum.Enum):
    OK = "ok"
    WARNING = "warning"
    FAILURE = "failure"


JsonValue = str | int | float | bool | None | list[str]


@dataclass(frozen=True)
class Check:
    """One finding: ``id`` names the check, ``port`` the listener it was made on."""

    id: str
    status: Status
    summary: str
    port: int | None = None
    fix: str | None = None
    details: Mapping[str, JsonValue] = field(default_factory=dict)


def ok(id: str, summary: str, port: int | None = None, **details: JsonValue) -> Check:
    return Check(id, Status.OK, summary, port, None, details)


def warning(
    id: str, summary: str, fix: str, port: int | None = None, **details: JsonValue
) -> Check:
    return Check(id, Status.WARNING, summary, port, fix, details)


def failure(
    id: str, summary: str, fix: str, port: int | None = None, **details: JsonValue
) -> Check:
    return Check(id, Status.FAILURE, summary, port, fix, details)


@dataclass
class Report:
    """Every check made, in order; ``unreachable`` is set when nothing could be checked."""

    host: str
    port: int
    stls_port: int
    checks: list[Check] = field(default_factory=list)
    unreachable: str | None = None
    # The leaf each TLS port served (``--config`` compares it with the files).
    served: dict[int, x509.Certificate] = field(default_factory=dict)
    config: str | None = None  # ``--config FILE``, when the local checks ran

    def add(self, checks: Check | Iterable[Check]) -> None:
        if isinstance(checks, Check):
            self.checks.append(checks)
        else:
            self.checks.extend(checks)

    def count(self, status: Status) -> int:
        return sum(1 for check in self.checks if check.status is status)

    @property
    def exit_status(self) -> int:
        """0 nothing failed, 1 something failed, 2 the server could not be checked at all."""
        if self.unreachable is not None:
            return EXIT_CANNOT_CHECK
        return EXIT_FAILED if self.count(Status.FAILURE) else EXIT_OK
