"""``python -m benchmarks.metrics_hooks``: the cost of one metrics hook call, off and on.

Times each session hook of :mod:`mailslot.metrics` with the no-op default and with
Prometheus (a throwaway multiprocess directory), best of 5 runs of 200,000 calls.  The
figures are in docs/metrics.md.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from mailslot import metrics
from mailslot.config import MetricsConfig

CALLS = 200_000


class _PlainTransport:
    def get_extra_info(self, name: str) -> None:
        return None


def main() -> None:
    directory = metrics.prepare(MetricsConfig(port=9154), None)
    try:
        transport: object = _PlainTransport()
        for label, hooks in (
            ("no-op", metrics.ListenerMetrics()),
            ("prometheus", metrics.PrometheusMetrics().listener("127.0.0.1:995")),
        ):
            calls: dict[str, Callable[[], None]] = {
                "connected()": hooks.connected,
                "login()": lambda hooks=hooks: hooks.login("USER", "ok"),
                "session_ended()": lambda hooks=hooks: hooks.session_ended(transport),
                "retrieved()": lambda hooks=hooks: hooks.retrieved(None, 1000),
                "commit()": lambda hooks=hooks: hooks.commit(0.001),
            }
            for name, call in calls.items():
                best = min(timeit.repeat(call, number=CALLS, repeat=5)) / CALLS
                print(f"{label:10s} {name:16s} {best * 1e9:7.0f} ns")
    finally:
        metrics.remove(directory)


if __name__ == "__main__":
    main()
