"""Render docs/dashboard.png: the panels of dashboards/mailslot.json over real data.

Grafana is not in Debian, so this draws the dashboard itself, from the same queries:

1. a real mailslot (``python -m mailslot serve``, 2 workers, metrics on) on 127.0.0.1, with
   POP3S, POP3 with STLS and LMTP listeners, a passwd-file and Maildirs in a temp directory;
2. real clients for ``--warmup`` plus ``--minutes`` minutes (only the last are drawn, once the
   panels' ``[5m]`` windows hold only the run): poplib sessions over TLS 1.3, TLS 1.2 and STLS
   (login, STAT, LIST, UIDL, RETR, TOP, DELE, QUIT), plain sessions that never log in, wrong
   passwords from a few loopback addresses for a while (the failure penalty), LMTP deliveries
   with smtplib (one user over quota: 552; one whose Maildir has a symlinked ``tmp/``: 451),
   and one worker killed with SIGKILL half-way (the parent replaces it);
3. Debian's ``prometheus`` scraping ``/metrics`` every 5 seconds;
4. each panel's PromQL, exactly as the dashboard has it, evaluated over the run through the
   HTTP API (``query_range``; a stat panel: an instant query at the end), drawn with
   matplotlib in the dashboard's grid (``gridPos``), titles, legends and units.

    scripts/dashboard-picture [--warmup 5] [--minutes 10] [--output docs/dashboard.png]

Needs the ``docs`` extra (matplotlib, trustme) and the ``prometheus`` program.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import os
import poplib
import random
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "dashboards" / "mailslot.json"
SCRAPE_SECONDS = 5
USERS = ("alice", "bob", "carol", "dave", "erin", "frank")
FULL = "archive"  # gets mail, never reads it: over quota after a while (552)
BROKEN = "broken"  # tmp/ is a symlink: every delivery deferred (451)
PASSWORD = "correct horse battery staple"
ATTACKERS = tuple(f"127.0.1.{n}" for n in range(1, 5))
QUOTA_MESSAGES = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the server --------------------------------------------------------------------------------


@dataclass
class Setup:
    directory: Path
    ca_pem: Path
    implicit: int
    starttls: int
    lmtp: int
    metrics: int
    config: Path


def prepare(directory: Path) -> Setup:
    import trustme

    from mailslot.auth import admin

    ca = trustme.CA(organization_name="mailslot dashboard picture")
    now = datetime.datetime.now(datetime.UTC)
    # As certbot's: 90 days, renewed with 30 left; this one was issued 20 days ago.
    leaf = ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=now - datetime.timedelta(days=20),
        not_after=now + datetime.timedelta(days=70),
    )
    ca_pem = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    chain = directory / "fullchain.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key = directory / "privkey.pem"
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    users = directory / "users"
    for name in (*USERS, FULL, BROKEN):
        admin.add_user(users, name, PASSWORD, scheme="SHA512-CRYPT")
    mail = directory / "mail"
    broken = mail / BROKEN / "Maildir"
    for sub in ("cur", "new"):
        (broken / sub).mkdir(parents=True)
    (broken / "tmp").symlink_to(directory)
    setup = Setup(
        directory, ca_pem, free_port(), free_port(), free_port(), free_port(), directory / "m.toml"
    )
    root = (
        '[server]\nrun_as_root = "a local run that draws the dashboard picture"\nworkers = 2\n'
        if os.geteuid() == 0
        else "[server]\nworkers = 2\n"
    )
    setup.config.write_text(
        f'[[listener]]\naddress = "127.0.0.1"\nport = {setup.implicit}\ntls = "implicit"\n\n'
        f'[[listener]]\naddress = "127.0.0.1"\nport = {setup.starttls}\ntls = "starttls"\n\n'
        f'[[listener]]\nprotocol = "lmtp"\naddress = "127.0.0.1"\nport = {setup.lmtp}\n\n'
        f'[tls]\ncertificate = "{chain}"\nprivate_key = "{key}"\n\n'
        f'[auth]\npasswd_file = "{users}"\nfailure_delay = 0.25\nfailure_delay_max = 2\n\n'
        f'[store]\nmaildir = "{mail}/{{user}}/Maildir"\n\n'
        f"[delivery]\nquota_messages = {QUOTA_MESSAGES}\n\n"
        f'{root}\n[metrics]\naddress = "127.0.0.1"\nport = {setup.metrics}\n'
    )
    return setup


def start_server(setup: Setup) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    log = (setup.directory / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "serve", "--config", str(setup.config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((setup.directory / "server.log").read_text())
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", setup.starttls), timeout=2) as probe,
        ):
            if probe.recv(512).startswith(b"+OK"):
                probe.sendall(b"QUIT\r\n")
                return process
        time.sleep(0.1)
    raise RuntimeError("mailslot did not greet within 30 seconds")


def start_prometheus(setup: Setup) -> tuple[subprocess.Popen[bytes], str]:
    program = shutil.which("prometheus") or "/usr/bin/prometheus"
    config = setup.directory / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {SCRAPE_SECONDS}s\n"
        "scrape_configs:\n"
        "  - job_name: mailslot\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{setup.metrics}']\n"
    )
    web = f"127.0.0.1:{free_port()}"
    log = (setup.directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            program,
            f"--config.file={config}",
            f"--storage.tsdb.path={setup.directory / 'tsdb'}",
            f"--web.listen-address={web}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, IndexError):
            if query(web, 'up{job="mailslot"}')[0]["value"][1] == "1":
                return process, web
        time.sleep(0.5)
    raise RuntimeError("prometheus did not scrape mailslot within 60 seconds")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the clients -------------------------------------------------------------------------------


class Pop3Tls(poplib.POP3_SSL):
    """POP3S from a chosen source address."""

    def __init__(self, port: int, context: ssl.SSLContext, source: str = "127.0.0.1") -> None:
        self.source = source
        # Our own reference: typeshed does not declare the ``context`` POP3_SSL keeps, and
        # super().__init__ connects (calls _create_socket) before it returns.
        self.tls_context = context
        super().__init__("127.0.0.1", port, context=context, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        raw = socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )
        return self.tls_context.wrap_socket(raw, server_hostname="localhost")


def read_mail(pop: poplib.POP3, rng: random.Random) -> None:
    count, _ = pop.stat()
    pop.list()
    pop.uidl()
    if count and rng.random() < 0.3:
        pop.top(1, 5)
    for number in range(1, min(count, rng.randint(1, 4)) + 1):
        pop.retr(number)
        if rng.random() < 0.7:
            pop.dele(number)
    pop.quit()


def session(setup: Setup, rng: random.Random) -> None:
    user = rng.choice(USERS)
    kind = rng.random()
    tls13 = ssl.create_default_context(cafile=str(setup.ca_pem))
    if kind < 0.55:
        pop: poplib.POP3 = Pop3Tls(setup.implicit, tls13)
    elif kind < 0.75:
        tls12 = ssl.create_default_context(cafile=str(setup.ca_pem))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        pop = Pop3Tls(setup.implicit, tls12)
    elif kind < 0.92:
        pop = poplib.POP3("127.0.0.1", setup.starttls, timeout=30)
        pop.stls(tls13)
    else:  # a client that looks and leaves: a session without TLS or login
        pop = poplib.POP3("127.0.0.1", setup.starttls, timeout=30)
        pop.capa()
        pop.quit()
        return
    pop.user(user)
    pop.pass_(PASSWORD)
    read_mail(pop, rng)


def guess(setup: Setup, source: str) -> None:
    context = ssl.create_default_context(cafile=str(setup.ca_pem))
    pop = Pop3Tls(setup.implicit, context, source)
    pop.user(random.choice(USERS))
    with contextlib.suppress(poplib.error_proto):
        pop.pass_("password123")
    with contextlib.suppress(poplib.error_proto, OSError):
        pop.quit()


def deliver(setup: Setup, rng: random.Random) -> None:
    roll = rng.random()
    user = FULL if roll < 0.15 else BROKEN if roll < 0.2 else rng.choice(USERS)
    size = rng.choice((600, 2_000, 12_000, 80_000))
    body = ("x" * 76 + "\r\n") * (size // 78)  # lines within RFC 5321's 1000 octets
    message = (
        f"From: news@example.org\r\nTo: {user}@example.org\r\nSubject: hello\r\n\r\n{body}\r\n"
    )
    with smtplib.LMTP("127.0.0.1", setup.lmtp) as lmtp, contextlib.suppress(smtplib.SMTPException):
        lmtp.sendmail("news@example.org", [f"{user}@example.org"], message)


def workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def drive(setup: Setup, server: subprocess.Popen[bytes], warmup: float, seconds: float) -> None:
    """Sessions at a rate that swells and ebbs, deliveries; after ``warmup`` seconds (the
    dashboard's [5m] windows filled), ``seconds`` more with a burst of guessing and a crash."""
    start = time.monotonic() + warmup  # times below count from the end of the warm-up
    done = threading.Event()
    errors: list[BaseException] = []

    def loop(step: Any, pace: Any) -> None:
        rng = random.Random(hash(step.__name__))
        while not done.is_set():
            elapsed = time.monotonic() - start
            try:
                step(elapsed, rng)
            except (OSError, poplib.error_proto, smtplib.SMTPException) as exc:
                errors.append(exc)
            done.wait(pace(elapsed, rng))

    def sessions(elapsed: float, rng: random.Random) -> None:
        session(setup, rng)

    def session_pace(elapsed: float, rng: random.Random) -> float:
        rate = 3.0 + 2.0 * math.sin(2 * math.pi * elapsed / 240)  # sessions per second
        return rng.expovariate(rate)

    def deliveries(elapsed: float, rng: random.Random) -> None:
        deliver(setup, rng)

    def delivery_pace(elapsed: float, rng: random.Random) -> float:
        return rng.expovariate(2.5)

    def guessing(elapsed: float, rng: random.Random) -> None:
        if seconds * 0.15 < elapsed < seconds * 0.45:
            guess(setup, ATTACKERS[int(elapsed) % len(ATTACKERS)])

    def guess_pace(elapsed: float, rng: random.Random) -> float:
        return 0.2

    threads = [
        threading.Thread(target=loop, args=(sessions, session_pace)),
        threading.Thread(target=loop, args=(sessions, session_pace)),
        threading.Thread(target=loop, args=(deliveries, delivery_pace)),
        threading.Thread(target=loop, args=(guessing, guess_pace)),
    ]
    for thread in threads:
        thread.start()
    killed = False
    try:
        while time.monotonic() - start < seconds:
            if not killed and time.monotonic() - start > seconds * 0.6:
                os.kill(workers_of(server.pid)[0], signal.SIGKILL)
                killed = True
            time.sleep(1)
            print(f"\r{int(time.monotonic() - start)} s, {len(errors)} client errors  ", end="")
    finally:
        done.set()
        for thread in threads:
            thread.join()
    print()
    for error in sorted({f"{type(e).__name__}: {e}" for e in errors}):
        print(f"client error: {error}")


# -- Prometheus's answers ----------------------------------------------------------------------


def query(base: str, expression: str, **params: Any) -> list[dict[str, Any]]:
    path = "query_range" if "start" in params else "query"
    url = f"http://{base}/api/v1/{path}?" + urllib.parse.urlencode({"query": expression, **params})
    with urllib.request.urlopen(url, timeout=30) as answer:
        body = json.load(answer)
    if body["status"] != "success":
        raise RuntimeError(f"{expression}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(target: dict[str, Any], labels: dict[str, str]) -> str:
    """Grafana's legendFormat: a fixed text, ``{{label}}`` templates, or the labels."""
    form = target.get("legendFormat", "__auto")
    if form not in ("__auto", ""):
        for key, value in labels.items():
            form = form.replace("{{" + key + "}}", value)
        return str(form)
    shown = {k: v for k, v in labels.items() if k not in ("job", "instance")}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "value"


# -- drawing -----------------------------------------------------------------------------------

BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLOURS = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9")
UNITS = {"reqps": "req/s", "cps": "conn/s", "ops": "/s", "short": "", "d": "days"}


def formatter(unit: str) -> Any:
    from matplotlib.ticker import FuncFormatter

    def binary(value: float, _: object = None) -> str:
        for prefix in ("", "Ki", "Mi", "Gi"):
            if abs(value) < 1024:
                return f"{value:.3g} {prefix}B/s"
            value /= 1024
        return f"{value:.3g} TiB/s"

    def seconds(value: float, _: object = None) -> str:
        return f"{value * 1000:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"

    if unit == "percentunit":
        return FuncFormatter(lambda v, _: f"{v * 100:.3g}%")
    if unit == "Bps":
        return FuncFormatter(binary)
    if unit == "s":
        return FuncFormatter(seconds)
    suffix = UNITS.get(unit, unit)
    return FuncFormatter(lambda v, _: f"{v:.3g} {suffix}".strip())


def draw(
    dashboard: dict[str, Any], base: str, span: tuple[float, float, float], output: Path
) -> list[str]:
    """Draw every panel into ``output``; return the titles of those without data."""
    _, start, end = span
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard["panels"]
    empty: list[str] = []
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) // 8
    figure = plt.figure(figsize=(16, 3.1 * rows + 1.0), facecolor=BACKGROUND)
    grid = figure.add_gridspec(rows * 8, 24, hspace=14, wspace=4, top=0.93, bottom=0.03)
    figure.suptitle(
        f"{dashboard['title']}: the panels of dashboards/mailslot.json, each query evaluated "
        f"by Prometheus over the last {(end - start) / 60:.0f} minutes of a run of "
        "scripts/dashboard-picture\n(real mailslot, real clients; drawn with matplotlib, "
        "not a Grafana screenshot)",
        color=TEXT,
        fontsize=11,
    )
    for panel in panels:
        pos = panel["gridPos"]
        axes = figure.add_subplot(
            grid[pos["y"] : pos["y"] + pos["h"] - 1, pos["x"] : pos["x"] + pos["w"]]
        )
        axes.set_facecolor(PANEL)
        axes.set_title(panel["title"], color=TEXT, loc="left", fontsize=11)
        for spine in axes.spines.values():
            spine.set_color(GRID)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        if panel["type"] == "stat":
            filled = draw_stat(axes, panel, base, end, unit)
        else:
            filled = draw_series(axes, panel, base, span, unit)
        if not filled:
            empty.append(panel["title"])
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=90, facecolor=BACKGROUND)
    return empty


def draw_series(
    axes: Any, panel: dict[str, Any], base: str, span: tuple[float, float, float], unit: str
) -> bool:
    """``span``: when the load began, the first and the last time drawn."""
    origin, start, end = span
    colour = itertools.cycle(COLOURS)  # more series than colours: they repeat
    for target in panel["targets"]:
        for series in query(base, target["expr"], start=start, end=end, step=SCRAPE_SECONDS):
            times = [(float(t) - origin) / 60 for t, _ in series["values"]]
            values = [float(v) for _, v in series["values"]]
            axes.plot(
                times,
                values,
                color=next(colour),
                linewidth=1.6,
                label=legend(target, series["metric"]),
            )
    axes.yaxis.set_major_formatter(formatter(unit))
    axes.set_xlim((start - origin) / 60, (end - origin) / 60)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("minutes into the run", color=TEXT, fontsize=8)
    axes.tick_params(colors=TEXT, labelsize=8)
    axes.grid(color=GRID, linewidth=0.6)
    if axes.lines:
        axes.legend(
            loc="upper left", fontsize=8, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT, ncol=3
        )
    else:
        axes.text(0.5, 0.5, "no data", color=TEXT, ha="center", transform=axes.transAxes)
    return bool(axes.lines)


def draw_stat(axes: Any, panel: dict[str, Any], base: str, end: float, unit: str) -> bool:
    (target,) = panel["targets"]
    result = query(base, target["expr"], time=end)
    value = float(result[0]["value"][1]) if result else math.nan
    text = "no data" if math.isnan(value) else formatter(unit)(value, None)
    axes.text(
        0.5,
        0.5,
        text,
        color=COLOURS[0],
        fontsize=40,
        ha="center",
        va="center",
        transform=axes.transAxes,
        fontweight="bold",
    )
    axes.set_xticks([])
    axes.set_yticks([])
    return not math.isnan(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes drawn (10)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="minutes of load before them, so that the panels' [5m] windows are full (5)",
    )
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs)")
    args = parser.parse_args()
    dashboard = json.loads(DASHBOARD.read_text())
    directory = Path(tempfile.mkdtemp(prefix="mailslot-dashboard-"))
    server = prometheus = None
    try:
        setup = prepare(directory)
        server = start_server(setup)
        prometheus, web = start_prometheus(setup)
        origin = time.time()
        drive(setup, server, args.warmup * 60, args.minutes * 60)
        time.sleep(2 * SCRAPE_SECONDS)  # the last counts scraped
        end = time.time()
        empty = draw(dashboard, web, (origin, origin + args.warmup * 60, end), args.output)
        print(f"wrote {args.output}")
        if empty:
            sys.exit(f"panels without data: {', '.join(empty)}")
    finally:
        for process in (prometheus, server):
            if process is not None:
                stop(process)
        if args.keep:
            print(f"kept {directory} (server.log, prometheus.log)")
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
