"""``[metrics]``: what real POP3 clients did, scraped from the exporter of 2 workers.

The server is started as root with ``user = "nobody"`` and 2 workers: each worker writes its
values into the multiprocess directory after the drop, and either worker's /metrics must
give the sum.  Counters are compared with what poplib did over TLS, the scraped text must pass
``promtool check metrics``, and a worker killed by SIGKILL must leave the totals where they
were and count one restart.
"""

from __future__ import annotations

import grp
import os
import poplib
import pwd
import re
import signal
import smtplib
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from tests.support.dropped import USER, children, require_importable_as, shared_directory
from tests.support.programs import require_program
from tests.support.server import Listener, MailslotServer, free_port
from tests.support.tls import TlsFiles

DEADLINE = 15.0  # seconds; polling for a state, not a threshold
DOCS = Path(__file__).parents[2] / "docs" / "metrics.md"
MESSAGE = b"From: bob@example.org\r\nSubject: metrics\r\n\r\nbody line\r\n"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text: str = answer.read().decode()
    return text


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def server(tls_files: TlsFiles) -> Iterator[MailslotServer]:
    require_importable_as(USER)
    entry = pwd.getpwnam(USER)
    with shared_directory() as directory:
        server = MailslotServer(
            directory / "server",
            tls_files,
            listeners=(Listener("implicit"), Listener("none", protocol="lmtp")),
            extra_sections={
                "server": {
                    "workers": 2,
                    "user": USER,
                    "group": grp.getgrgid(entry.pw_gid).gr_name,
                },
                "metrics": {"address": "127.0.0.1", "port": free_port()},
            },
        )
        os.chown(server.mail_root, entry.pw_uid, entry.pw_gid)
        os.chown(server.passwd_path, 0, entry.pw_gid)
        server.passwd_path.chmod(0o640)
        builder = server.builder("alice")
        builder.add(MESSAGE)
        builder.add(MESSAGE + b"second\r\n")
        server.builder("bob").add(MESSAGE)
        for path in server.mail_root.rglob("*"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        # As under systemd's UMask=0077: the root parent's value files must still be
        # readable by the workers that answer a scrape.
        umask = os.umask(0o077)
        try:
            server.start()
        finally:
            os.umask(umask)
        try:
            yield server
        finally:
            server.stop()


def metrics_port(server: MailslotServer) -> int:
    for line in server.config_path.read_text().split("[metrics]", 1)[1].splitlines():
        if line.startswith("port = "):
            return int(line.split("=")[1])
    raise LookupError("no [metrics] port")


def metrics_directory(server: MailslotServer) -> set[Path]:
    """The directories of the value files the workers map (from /proc/PID/maps)."""
    assert server.process is not None
    return {
        Path(line.split()[-1]).parent
        for child in children(server.process.pid)
        for line in Path(f"/proc/{child}/maps").read_text().splitlines()
        if "/mailslot-metrics-" in line
    }


def client(server: MailslotServer) -> poplib.POP3_SSL:
    address, port = server.implicit
    return poplib.POP3_SSL(address, port, context=server.tls_files.client_context(), timeout=10)


def test_counters_match_what_clients_did_over_two_workers(server: MailslotServer) -> None:
    port = metrics_port(server)
    listener = f"127.0.0.1:{server.implicit[1]}"
    # Workers write their counts out every second: wait for the start-up probe's session
    # (MailslotServer.start greets each listener once), so the baseline holds still.
    deadline = time.monotonic() + DEADLINE
    while True:
        before = samples(scrape(port))
        if value(before, "mailslot_sessions_total", listener=listener, tls="TLSv1.3") == 1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)

    failed = client(server)
    failed.user("alice")
    with pytest.raises(poplib.error_proto):
        failed.pass_("not the password")
    failed.quit()
    pop = client(server)
    pop.user("alice")
    pop.pass_(server.password("alice"))
    assert pop.retr(1)[0].startswith(b"+OK")
    pop.top(2, 0)
    pop.dele(1)
    with pytest.raises(poplib.error_proto):
        pop._shortcmd("X-EVIL\x1b[31m")  # an unknown verb: counted as "unknown", never itself
    pop.quit()

    # Sessions are counted as they end, the server's side a moment after the client's QUIT,
    # and each worker writes its counts out a second later at most.
    deadline = time.monotonic() + DEADLINE
    while True:
        text = scrape(port)
        after = samples(text)
        ended = value(after, "mailslot_sessions_total", listener=listener, tls="TLSv1.3")
        if ended - value(before, "mailslot_sessions_total", listener=listener, tls="TLSv1.3") >= 2:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.05)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("mailslot_connections_total", listener=listener) == 2
    assert delta("mailslot_logins_total", listener=listener, result="ok", mechanism="USER") == 1
    assert delta("mailslot_logins_total", listener=listener, result="failed", mechanism="USER") == 1
    assert delta("mailslot_login_penalty_seconds_count") == 1
    assert delta("mailslot_messages_retrieved_total", command="RETR") == 1
    assert delta("mailslot_messages_retrieved_total", command="TOP") == 1
    assert delta("mailslot_retrieved_bytes_total") == len(MESSAGE)
    assert delta("mailslot_messages_deleted_total") == 1
    assert delta("mailslot_commit_duration_seconds_count") == 1
    # Commands by verb, over both workers: the two sessions' USER, PASS and QUIT, and what
    # the second sent (poplib sends nothing else: no CAPA).
    commands = {
        verb: delta("mailslot_commands_total", listener=listener, command=verb)
        for verb in ("USER", "PASS", "RETR", "TOP", "DELE", "QUIT", "unknown", "STAT")
    }
    assert commands == {
        "USER": 2,
        "PASS": 2,
        "RETR": 1,
        "TOP": 1,
        "DELE": 1,
        "QUIT": 2,
        "unknown": 1,
        "STAT": 0,
    }
    assert "X-EVIL" not in text
    # The certificate's series, written by the root parent under umask 0077 and read by a
    # worker that is nobody: one, not summed over the processes.
    expiry = {
        labels: found
        for (name, labels), found in after.items()
        if name == "mailslot_certificate_expiry_timestamp_seconds"
    }
    leaf = x509.load_pem_x509_certificate(server.tls_files.certificate.read_bytes())
    assert expiry == {
        (
            ("certificate", str(server.tls_files.certificate)),
            ("key_type", "ecdsa"),
            ("names", "localhost,127.0.0.1,::1"),
        ): leaf.not_valid_after_utc.timestamp()
    }
    # No user name or address in any label.
    assert "alice" not in text
    assert "nobody" not in text

    # One LMTP delivery: one 2xx reply.
    with smtplib.LMTP(*server.listener("none", protocol="lmtp"), timeout=10) as lmtp:
        lmtp.sendmail("bob@example.org", ["alice"], MESSAGE)
    assert value(samples(scrape(port)), "mailslot_lmtp_deliveries_total", **{"class": "2xx"}) == 1

    # A maildrop the store cannot open: the login fails and the store error is counted.
    server.maildir("bob").chmod(0)
    broken = client(server)
    broken.user("bob")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/"):
        broken.pass_(server.password("bob"))
    broken.quit()
    deadline = time.monotonic() + DEADLINE
    while True:
        text = scrape(port)
        if value(samples(text), "mailslot_store_errors_total", operation="open") == 1:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.05)

    # docs/metrics.md describes every metric the server exports, and only those.
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    documented = set(re.findall(r"^\| `(mailslot_\w+)`", DOCS.read_text(), re.MULTILINE))
    assert exported == documented

    # promtool checks names, units, HELP/TYPE and histogram shape of the scraped text.
    promtool = require_program("promtool")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # A worker dies: its counters stay in the sum, and the parent counts the restart.
    assert server.process is not None
    workers = children(server.process.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE
    while True:
        later = samples(scrape(port))
        restarted = value(later, "mailslot_worker_restarts_total") == 1
        if restarted and len(children(server.process.pid)) == 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for name, labels in (
        ("mailslot_logins_total", {"listener": listener, "result": "ok", "mechanism": "USER"}),
        ("mailslot_messages_deleted_total", {}),
        ("mailslot_connections_total", {"listener": listener}),
    ):
        assert value(later, name, **labels) >= value(after, name, **labels), name


def test_the_directory_is_removed_and_other_paths_are_not_found(
    server: MailslotServer,
) -> None:
    port = metrics_port(server)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert refused.value.code == 404
    mapped = metrics_directory(server)
    assert len(mapped) == 1
    directory = mapped.pop()
    assert directory.stat().st_uid == pwd.getpwnam(USER).pw_uid
    assert server.stop() == 0
    assert not directory.exists()


def test_a_retiring_generation_writes_out_its_counts(server: MailslotServer) -> None:
    """SIGHUP retires the workers at once (no session is open): what they counted since
    their last periodic write must still reach the directory."""
    port = metrics_port(server)
    listener = f"127.0.0.1:{server.implicit[1]}"
    assert server.process is not None
    old = set(children(server.process.pid))
    pop = client(server)
    pop.user("alice")
    pop.pass_(server.password("alice"))
    pop.quit()
    os.kill(server.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + DEADLINE
    while old & set(children(server.process.pid)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    found = samples(scrape(port))
    assert value(found, "mailslot_logins_total", listener=listener, result="ok", mechanism="USER")


def test_an_empty_value_file_left_by_a_killed_worker_is_skipped(server: MailslotServer) -> None:
    """prometheus_client creates a value file empty and sizes it just after: a worker
    SIGKILLed in between leaves an empty file for good (prometheus/client_python#1199).
    Every later scrape must still answer, with everything the other files hold."""
    port = metrics_port(server)
    listener = f"127.0.0.1:{server.implicit[1]}"
    pop = client(server)
    pop.user("alice")
    pop.pass_(server.password("alice"))
    pop.quit()
    (directory,) = metrics_directory(server)
    (directory / "counter_2147483646.db").touch()  # a pid no worker has: the killed one's
    deadline = time.monotonic() + DEADLINE
    while True:  # a login is written to the files within a second
        found = samples(scrape(port))
        labels = {"listener": listener, "result": "ok", "mechanism": "USER"}
        if value(found, "mailslot_logins_total", **labels) == 1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_damaged_value_file_answers_500_and_is_logged(server: MailslotServer) -> None:
    port = metrics_port(server)
    (directory,) = metrics_directory(server)
    damaged = directory / "counter_2147483645.db"
    # 64 bytes used, then a key said to be 65,535 bytes long: beyond what the file holds.
    damaged.write_bytes((64).to_bytes(4, "little") + bytes(4) + (65535).to_bytes(4, "little"))
    with damaged.open("ab") as f:
        f.truncate(64)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert refused.value.code == 500
    # An error line is written at once, before the reply.
    assert "metrics: cannot read the values: Read beyond file size" in server.log()
    damaged.unlink()
    assert "mailslot_login_penalty_seconds_count" in scrape(port)
