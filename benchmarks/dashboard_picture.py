"""Render docs/dashboard.png: the panels of dashboards/mailslot.json over real data.

Grafana is not in Debian, so this draws the dashboard itself, from the same queries:

1. a real mailslot (``python -m mailslot serve``, 2 workers, metrics on) on 127.0.0.1, with
   POP3S, POP3 with STLS and LMTP listeners, a passwd-file and Maildirs in a temp directory;
2. real clients for ``--warmup`` plus ``--minutes`` minutes (only the last are drawn, once the
   panels' ``[5m]`` windows hold only the run), each user from a loopback address of its own
   (the failure penalty is per address): poplib sessions over TLS 1.3, TLS 1.2 and STLS
   (login, STAT, LIST, UIDL, RETR, TOP, DELE, QUIT), one in a hundred after a mistyped
   password; plain sessions that never log in; one user whose desktop client holds its
   session open for 30 s of every minute while its phone polls every 5 s (``[IN-USE]``);
   a disabled account (``nologin nodelay``) whose phone still polls every 20 s; password
   guessing from three loopback addresses for three of the ten minutes, each connection
   guessing again 1 s after its answer (the failure penalty: one guesser one connection at a
   time, one with three connections side by side, whose attempts past the penalty's horizon
   are refused unchecked, one as the last but giving up after a second); LMTP deliveries
   with smtplib (one user over quota: 552; one whose Maildir has a symlinked ``tmp/``: 451);
   and one worker killed with SIGKILL half-way (the parent replaces it). The server has two
   certificates for the same names, an ECDSA one issued 20 days ago and an RSA one issued
   45 days ago, both of 90 days, as certbot's;
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
POLLER = "grace"  # a desktop client holds the session while a phone polls: [IN-USE]
DISABLED = "henry"  # nologin nodelay (Dovecot's way to close an account), a phone still polls
PASSWORD = "correct horse battery staple"
TYPO_SHARE = 0.01  # sessions whose first PASS is mistyped
# Each user from an address of its own, as from their homes: the failure penalty is per
# address, so one user's typo does not delay the others.
ADDRESS = {user: f"127.0.2.{n}" for n, user in enumerate(USERS, 1)}
DESKTOP, PHONE, DISABLED_PHONE = "127.0.2.20", "127.0.2.21", "127.0.2.30"


@dataclass(frozen=True)
class Guesser:
    """A guessing client address: ``parallel`` connections at once, each giving up after
    ``patience`` seconds without an answer."""

    address: str
    parallel: int
    patience: float


GUESSERS = (
    Guesser("127.0.1.1", 1, 30.0),  # one at a time: every guess checked, the penalty grows
    Guesser("127.0.1.2", 3, 30.0),  # side by side: guesses past the horizon refused unchecked
    Guesser("127.0.1.3", 3, 1.0),  # as the last, but leaves while waiting its turn: aborted
)
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
    ca_pem = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    # An ECDSA certificate and an RSA one for the same names, served side by side, renewed
    # apart (the dashboard shows each one's expiry).
    files = []
    for name, key_type, age in (
        ("ecdsa", trustme.KeyType.ECDSA, 20),
        ("rsa", trustme.KeyType.RSA, 45),
    ):
        leaf = ca.issue_cert(
            "localhost",
            "127.0.0.1",
            not_before=now - datetime.timedelta(days=age),
            not_after=now + datetime.timedelta(days=90 - age),
            key_type=key_type,
        )
        chain = directory / f"fullchain-{name}.pem"
        chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key = directory / f"privkey-{name}.pem"
        leaf.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        files.append((chain, key))
    (chain, key), (rsa_chain, rsa_key) = files
    users = directory / "users"
    for name in (*USERS, FULL, BROKEN, POLLER, DISABLED):
        admin.add_user(users, name, PASSWORD, scheme="SHA512-CRYPT")
    # The eighth field of a passwd-file line holds the extra fields (docs/configuration.md).
    lines = users.read_text().splitlines()
    users.write_text(
        "".join(
            line + ("::::::nologin nodelay" if line.startswith(f"{DISABLED}:") else "") + "\n"
            for line in lines
        )
    )
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
        f'[[tls.certificates]]\ncertificate = "{rsa_chain}"\nprivate_key = "{rsa_key}"\n\n'
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


class Pop3(poplib.POP3):
    """POP3 (for STLS) from a chosen source address."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source  # before super().__init__, which connects
        super().__init__("127.0.0.1", port, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


class Pop3Tls(poplib.POP3_SSL):
    """POP3S from a chosen source address."""

    def __init__(
        self, port: int, context: ssl.SSLContext, source: str = "127.0.0.1", timeout: float = 30
    ) -> None:
        self.source = source
        # Our own reference: typeshed does not declare the ``context`` POP3_SSL keeps, and
        # super().__init__ connects (calls _create_socket) before it returns.
        self.tls_context = context
        super().__init__("127.0.0.1", port, context=context, timeout=timeout)

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


def reply(exc: poplib.error_proto) -> bytes:
    """The server's -ERR line, or poplib's own text (a str: ``-ERR EOF`` when the
    connection closed, as when its worker was killed)."""
    text = exc.args[0] if exc.args else b""
    return text if isinstance(text, bytes) else text.encode()


def login(pop: poplib.POP3, user: str, password: str = PASSWORD) -> bool:
    """USER and PASS; False (and QUIT) if the maildrop is in use, as a client that polls
    again later; any other refusal raises."""
    pop.user(user)
    try:
        pop.pass_(password)
    except poplib.error_proto as exc:
        if b"[IN-USE]" not in reply(exc):
            raise
        pop.quit()
        return False
    return True


def session(setup: Setup, rng: random.Random) -> None:
    user = rng.choice(USERS)
    source = ADDRESS[user]
    kind = rng.random()
    tls13 = ssl.create_default_context(cafile=str(setup.ca_pem))
    if kind < 0.55:
        pop: poplib.POP3 = Pop3Tls(setup.implicit, tls13, source)
    elif kind < 0.75:
        tls12 = ssl.create_default_context(cafile=str(setup.ca_pem))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        pop = Pop3Tls(setup.implicit, tls12, source)
    elif kind < 0.92:
        pop = Pop3(setup.starttls, source)
        pop.stls(tls13)
    else:  # a client that looks and leaves: a session without TLS or login
        pop = Pop3(setup.starttls, source)
        pop.capa()
        pop.quit()
        return
    if rng.random() < TYPO_SHARE:  # mistyped, then typed again (RFC 1939: USER anew)
        pop.user(user)
        with contextlib.suppress(poplib.error_proto):
            pop.pass_(PASSWORD.replace("horse", "hrose"))
    if login(pop, user):
        read_mail(pop, rng)


def context_of(setup: Setup) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(setup.ca_pem))


def desktop(setup: Setup, done: threading.Event) -> None:
    """POLLER's desktop client: logs in, then holds the session 30 s (NOOP every 10 s, as a
    client reading slowly), QUIT; again after 30 s."""
    pop = Pop3Tls(setup.implicit, context_of(setup), DESKTOP)
    if not login(pop, POLLER):
        return
    pop.stat()
    pop.uidl()
    for _ in range(3):
        if done.wait(10):
            break
        pop.noop()
    pop.quit()


def phone(setup: Setup, rng: random.Random) -> None:
    """POLLER's phone: polls; refused [IN-USE] while the desktop holds the maildrop."""
    pop = Pop3Tls(setup.implicit, context_of(setup), PHONE)
    if login(pop, POLLER):
        read_mail(pop, rng)


def disabled_phone(setup: Setup) -> None:
    """A disabled account's phone, still polling: -ERR [AUTH] Login disabled, at once."""
    pop = Pop3Tls(setup.implicit, context_of(setup), DISABLED_PHONE)
    pop.user(DISABLED)
    try:
        pop.pass_(PASSWORD)
    except poplib.error_proto as exc:
        if b"disabled" not in reply(exc):
            raise
    else:
        raise poplib.error_proto(f"{DISABLED} logged in: nologin not applied")
    pop.quit()


def guess(setup: Setup, guesser: Guesser, rng: random.Random) -> None:
    """One guess; a guesser that gives up closes without waiting for the answer."""
    try:
        pop = Pop3Tls(setup.implicit, context_of(setup), guesser.address, guesser.patience)
    except TimeoutError:
        return  # a loaded machine: the handshake took longer than an impatient guesser waits
    try:
        pop.user(rng.choice(USERS))
        with contextlib.suppress(poplib.error_proto):
            pop.pass_("password123")
        with contextlib.suppress(poplib.error_proto):
            pop.quit()
    except TimeoutError:
        pass  # gave up: the server counts the attempt aborted if it had not been checked
    finally:
        pop.close()


def deliver(setup: Setup, rng: random.Random) -> None:
    roll = rng.random()
    user = FULL if roll < 0.15 else BROKEN if roll < 0.2 else rng.choice((*USERS, POLLER))
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
        rng = random.Random()  # a sequence of its own: two threads run the same step
        while not done.is_set():
            elapsed = time.monotonic() - start
            try:
                step(elapsed, rng)
            except Exception as exc:  # counted and shown; the load goes on
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

    def desktops(elapsed: float, rng: random.Random) -> None:
        desktop(setup, done)

    def phones(elapsed: float, rng: random.Random) -> None:
        phone(setup, rng)

    def disabled_phones(elapsed: float, rng: random.Random) -> None:
        disabled_phone(setup)

    def guessing(guesser: Guesser) -> Any:
        def step(elapsed: float, rng: random.Random) -> None:
            if seconds * 0.15 < elapsed < seconds * 0.45:
                guess(setup, guesser, rng)

        return step

    def every(interval: float) -> Any:
        return lambda elapsed, rng: interval

    threads = [
        threading.Thread(target=loop, args=(sessions, session_pace)),
        threading.Thread(target=loop, args=(sessions, session_pace)),
        threading.Thread(target=loop, args=(deliveries, delivery_pace)),
        threading.Thread(target=loop, args=(desktops, every(30))),
        threading.Thread(target=loop, args=(phones, every(5))),
        threading.Thread(target=loop, args=(disabled_phones, every(20))),
        *(
            threading.Thread(target=loop, args=(guessing(guesser), every(1)))
            for guesser in GUESSERS
            for _ in range(guesser.parallel)
        ),
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
COLOURS = (
    *("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#b877d9", "#37e2d5"),
    *("#ff99c3", "#ffffff", "#1f60c4", "#c4a35a", "#8f3bb8", "#a0a0a0", "#37872d"),
)
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
    # Grafana's 24 columns and a spacer between the halves, for the right panels' tick labels.
    grid = figure.add_gridspec(rows * 8, 25, hspace=14, wspace=4, top=0.93, bottom=0.03)
    figure.suptitle(
        f"{dashboard['title']}: the panels of dashboards/mailslot.json, each query evaluated "
        f"by Prometheus over the last {(end - start) / 60:.0f} minutes of a run of "
        f"scripts/dashboard-picture at {revision()}\n(real mailslot, real clients; drawn with "
        "matplotlib, not a Grafana screenshot)",
        color=TEXT,
        fontsize=11,
    )
    for panel in panels:
        pos = panel["gridPos"]
        left, right = pos["x"], pos["x"] + pos["w"]
        axes = figure.add_subplot(
            grid[
                pos["y"] : pos["y"] + pos["h"] - 1,
                left + (left >= 12) : right + (right > 12),
            ]
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
    # More series than colours: they repeat, dashed.
    styles = itertools.cycle([(c, "-") for c in COLOURS] + [(c, "--") for c in COLOURS])
    for target in panel["targets"]:
        for series in query(base, target["expr"], start=start, end=end, step=SCRAPE_SECONDS):
            times = [(float(t) - origin) / 60 for t, _ in series["values"]]
            values = [float(v) for _, v in series["values"]]
            colour, style = next(styles)
            axes.plot(
                times,
                values,
                color=colour,
                linestyle=style,
                linewidth=1.6,
                label=legend(target, series["metric"]),
            )
    axes.yaxis.set_major_formatter(formatter(unit))
    axes.set_xlim((start - origin) / 60, (end - origin) / 60)
    # Room above the lines for the legend, which Grafana puts under the panel.
    top = max((v for line in axes.lines for v in line.get_ydata() if not math.isnan(v)), default=0)
    axes.set_ylim(0, top * (1.2 + 0.12 * math.ceil(len(axes.lines) / 3)) or None)
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
    """Grafana's stat panel: one value per series, side by side, each named by its legend
    when there are several."""
    (target,) = panel["targets"]
    values = [
        (legend(target, series["metric"]), float(series["value"][1]))
        for series in query(base, target["expr"], time=end)
    ]
    values = [(name, value) for name, value in sorted(values) if not math.isnan(value)]
    axes.set_xticks([])
    axes.set_yticks([])
    if not values:
        axes.text(0.5, 0.5, "no data", color=TEXT, ha="center", transform=axes.transAxes)
        return False
    for n, (name, value) in enumerate(values):
        x = (n + 0.5) / len(values)
        axes.text(
            x,
            0.5,
            formatter(unit)(value, None),
            color=COLOURS[0],
            fontsize=40 if len(values) == 1 else 32,
            ha="center",
            va="center",
            transform=axes.transAxes,
            fontweight="bold",
        )
        if len(values) > 1:
            axes.text(x, 0.2, name, color=TEXT, fontsize=10, ha="center", transform=axes.transAxes)
    return True


def revision() -> str:
    """The commit drawn, and whether the work tree differed from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%h (%cs)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "-uno", "--", ".", ":!docs"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


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
