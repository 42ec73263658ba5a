"""``python -m benchmarks.metrics_hooks``: the cost of one metrics hook call, off and on.

Times each session hook of :mod:`mailslot.metrics` with the no-op default and with
Prometheus (a throwaway multiprocess directory), best of 5 runs of 200,000 calls.  The
figures are in docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import timeit
from collections.abc import Callable
from typing import Any

from mailslot import metrics
from mailslot.config import MetricsConfig

CALLS = 200_000


class _PlainTransport(asyncio.BaseTransport):
    """A transport without TLS: all ``session_ended()`` asks of it."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return None


def _calls(
    hooks: metrics.ListenerMetrics, transport: asyncio.BaseTransport
) -> dict[str, Callable[[], None]]:
    """The calls to time, by name: each a hook with the arguments a session gives it."""
    return {
        "connected()": hooks.connected,
        "login()": lambda: hooks.login("USER", "ok"),
        "session_ended()": lambda: hooks.session_ended(transport),
        "retrieved()": lambda: hooks.retrieved(None, 1000),
        "commit()": lambda: hooks.commit(0.001),
    }


def main() -> None:
    directory = metrics.prepare(MetricsConfig(port=9154), None)
    try:
        transport = _PlainTransport()
        listeners: tuple[tuple[str, metrics.ListenerMetrics], ...] = (
            ("no-op", metrics.ListenerMetrics()),
            ("prometheus", metrics.PrometheusMetrics().listener("127.0.0.1:995")),
        )
        for label, hooks in listeners:
            for name, call in _calls(hooks, transport).items():
                best = min(timeit.repeat(call, number=CALLS, repeat=5)) / CALLS
                print(f"{label:10s} {name:16s} {best * 1e9:7.0f} ns")
    finally:
        metrics.remove(directory)


if __name__ == "__main__":
    main()
