"""Fixtures for the ACME tests: the test DNS server and a private pebble (tests/support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.dnsserver import DnsState, dns_server
from tests.support.pebble import Pebble, make_pebble
from tests.support.programs import require_program
from tests.support.server import free_port

PebbleFactory = Callable[..., Pebble]


@pytest.fixture
def dns() -> Iterator[DnsState]:
    with dns_server() as server:
        yield server


@pytest.fixture
def pebble_factory(tmp_path: Path, dns: DnsState) -> Iterator[PebbleFactory]:
    """``pebble_factory(start=True)``: a pebble whose HTTP-01 and TLS-ALPN-01 validations go
    to free ports of its own (``.http_port``, ``.tls_port``), resolving through ``dns``."""
    require_program("pebble")
    made: list[Pebble] = []

    def make(*, start: bool = True) -> Pebble:
        pebble = make_pebble(
            tmp_path / f"pebble{len(made)}",
            http_port=free_port(),
            tls_port=free_port(),
            dns_port=dns.port,
        )
        made.append(pebble)
        return pebble.start() if start else pebble

    yield make
    for pebble in made:
        pebble.stop()  # its log stays in its directory (pebble.log)
