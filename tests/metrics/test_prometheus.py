"""A real Prometheus scrapes mailslot's /metrics and has the values a client caused.

Prometheus (Debian's ``prometheus`` package; CI installs it) runs with a one-second scrape
interval on a fresh TSDB directory; its HTTP API is polled until ``mailslot_logins_total``
arrives with the logins a poplib client made.
"""

from __future__ import annotations

import contextlib
import json
import poplib
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.programs import require_program
from tests.support.server import Listener, MailslotServer, ServerFactory, free_port

DEADLINE = 60.0  # seconds for Prometheus to start and scrape; polling, not a threshold


@pytest.fixture
def server(mailslot_factory: ServerFactory) -> MailslotServer:
    server = mailslot_factory(
        listeners=(Listener("implicit"),),
        extra_sections={"server": {"workers": 2}, "metrics": {"port": free_port()}},
    )
    server.builder("alice").add(b"Subject: scraped\r\n\r\nbody\r\n")
    return server


@pytest.fixture
def prometheus(server: MailslotServer, tmp_path: Path) -> Iterator[str]:
    program = require_program("prometheus")
    port = int(
        server.config_path.read_text().split("[metrics]", 1)[1].split("port = ")[1].split()[0]
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: mailslot\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n"
    )
    web = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            program,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={web}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield web
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(base: str, expression: str) -> list[dict[str, object]]:
    url = f"http://{base}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.load(answer)
    except OSError:
        return []  # not up yet
    assert body["status"] == "success", body
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_the_logins(server: MailslotServer, prometheus: str) -> None:
    address, port = server.implicit
    for password in ("wrong", server.password("alice")):
        pop = poplib.POP3_SSL(address, port, context=server.tls_files.client_context())
        pop.user("alice")
        with contextlib.suppress(poplib.error_proto):  # the wrong password's -ERR
            pop.pass_(password)
        pop.quit()

    wanted = {"ok": "1", "failed": "1"}
    deadline = time.monotonic() + DEADLINE
    while True:
        found = {
            str(item["metric"]["result"]): item["value"][1]  # type: ignore[index]
            for item in query(prometheus, 'mailslot_logins_total{job="mailslot"}')
        }
        if found == wanted:
            break
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    up = query(prometheus, 'up{job="mailslot"}')
    assert [item["value"][1] for item in up] == ["1"]  # type: ignore[index]
    # The certificate's series, as Prometheus stored it: one, with its labels.
    expiry = query(prometheus, 'mailslot_certificate_expiry_timestamp_seconds{job="mailslot"}')
    assert [item["metric"]["certificate"] for item in expiry] == [  # type: ignore[index]
        str(server.tls_files.certificate)
    ]
    assert expiry[0]["metric"]["key_type"] == "ecdsa"  # type: ignore[index]
    assert expiry[0]["metric"]["names"] == "localhost,127.0.0.1,::1"  # type: ignore[index]
