"""The servers under test, each started under a temp dir with its own ports and Maildir tree.

* ``mailslot``: ``python -m mailslot serve --config FILE``.
* ``dovecot``: a throwaway Dovecot in stock mode (a login process per connection).
* ``dovecot-hp``: the same in Dovecot's documented high-performance login mode:
  ``service_count = 0`` and ``process_min_avail`` = cores for pop3-login, so long-lived login
  processes take the connections and TLS; each session still gets a new pop3 process.
* ``dovecot-sc0``: high-performance login mode plus ``service_count = 0`` for pop3 as well, so
  pop3 processes are reused too: the fastest Dovecot we know how to set up.
* ``twisted``: Twisted's POP3 server in one process (``benchmarks/twisted_pop3.py``), the
  issue's single-process peer. It has no STLS.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import proctree

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_greeting(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll until the plain port answers +OK; fail early if the server exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"+OK"):
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"no greeting on port {port} within {timeout}s ({last}): {tail(log)}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Server:
    name: str
    workdir: Path
    mail_root: Path
    plain_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    stls: bool = True  # offers STLS (RFC 2595) on the plain port
    # The certificate chain (leaf first) and key its TLS listeners serve; read at start().
    cert: Path = Path()
    key: Path = Path()

    @property
    def log(self) -> Path:
        return self.workdir / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.workdir,
                start_new_session=True,  # our Ctrl-C must not reach it before we stop it
            )
        wait_greeting(self.plain_port, self.proc, self.log, timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        # Dovecot's children may outlive the master by a moment; ports must be free again.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(proctree.tree(self.proc.pid)) > 1:
            time.sleep(0.1)


@dataclass
class Mailslot(Server):
    """``mailslot serve`` with a STLS and an implicit-TLS listener.

    ``[auth] failure_delay = 0``: every load connection comes from 127.0.0.1, and with the
    default penalty (no free attempts, 2 s) each password check that overlaps another from
    the same address waits its slot, successful ones too, so the run measured the penalty
    (logins with a p99 of 2 s).  Dovecot and Twisted delay only after failures, which a run
    has none of.
    """

    passwd: Path = Path()
    workers: int = 1

    def config_text(self) -> str:
        """Both listeners, the TLS pair and the limits, around this server's own backends."""
        return f"""[server]
workers = {self.workers}
{self.server_options()}run_as_root = "a benchmark on 127.0.0.1 (ignored unless started as root)"
[[listener]]
address = "127.0.0.1"
port = {self.plain_port}
tls = "starttls"
[[listener]]
address = "127.0.0.1"
port = {self.tls_port}
tls = "implicit"
[tls]
certificate = "{self.cert}"
private_key = "{self.key}"
{self.backends()}[limits]
max_connections = 30000
max_connections_per_ip = 30000
"""

    def server_options(self) -> str:
        """More ``[server]`` lines."""
        return ""

    def backends(self) -> str:
        """The ``[auth]`` and ``[store]`` sections: the passwd-file and Maildirs."""
        return f"""[auth]
passwd_file = "{self.passwd}"
allow_plaintext_without_tls = true
failure_delay = 0  # as mailslot-pg's, below
[store]
maildir = "{self.mail_root}/{{user}}/Maildir"
"""

    @property
    def config_path(self) -> Path:
        return self.workdir / "mailslot.toml"

    def command(self) -> list[str]:
        self.config_path.write_text(self.config_text())
        return [sys.executable, "-m", "mailslot", "serve", "--config", str(self.config_path)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        src = str(REPO / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
        return env


@dataclass
class MailslotPg(Mailslot):
    """mailslot on the PostgreSQL store, users in PostgreSQL too (``mailslot-pg``).

    ``dsn`` is a database of the run's private cluster (``benchmarks/pgcluster.py``), its
    schema made by ``mailslot db upgrade``; ``pg_pid`` is the postmaster, whose process tree's
    CPU is reported next to mailslot's.  ``mail_root`` is unused (no Maildirs).
    """

    dsn: str = ""
    pg_pid: int = 0
    node_id: str = "bench-1"
    pool_size: int = 4
    cgroup: str = ""  # a cgroup v1 cpu directory the node starts in (benchmarks.pg_scaling)

    def server_options(self) -> str:
        return f'node_id = "{self.node_id}"\n'

    def backends(self) -> str:
        """Users and mail in the PostgreSQL database ``dsn``."""
        return f"""[auth]
backend = "postgresql"
allow_plaintext_without_tls = true
# Off: every check reserves a penalty slot for its address before the password lookup, so
# concurrent logins from one address (all of the load generator's) whose lookup waits on the
# database pile up strikes and wait seconds with no failure at all (docs/benchmarks.md).
failure_delay = 0
[store]
backend = "postgresql"
dsn = "{self.dsn}"
pool_size = {self.pool_size}
"""

    def upgrade(self) -> None:
        """``mailslot db upgrade``: the schema, as an operator makes it."""
        self.config_path.write_text(self.config_text())
        subprocess.run(
            [sys.executable, "-m", "mailslot", "db", "upgrade", "--config", str(self.config_path)],
            check=True,
            env=self.environment(),
            capture_output=True,
        )

    def command(self) -> list[str]:
        serve = super().command()
        if not self.cgroup:
            return serve
        # Into the cgroup before exec, so the workers it forks are born in it.
        join = f'echo $$ > "{self.cgroup}/cgroup.procs" && exec "$0" "$@"'
        return ["sh", "-c", join, *serve]


@dataclass
class TwistedPop3(Server):
    passwd: Path = Path()
    stls: bool = False

    def command(self) -> list[str]:
        # -u: the log is the server's stdout, unbuffered as mailslot's and Dovecot's logs are.
        return [
            *(sys.executable, "-u", "-m", "benchmarks.twisted_pop3"),
            *("--passwd", str(self.passwd), "--mail-root", str(self.mail_root)),
            *("--plain-port", str(self.plain_port), "--tls-port", str(self.tls_port)),
            *("--cert", str(self.cert), "--key", str(self.key)),
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (
            os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else ""
        )
        return env


def ensure_twisted() -> None:
    """Twisted's POP3 server needs ``twisted`` and ``pyOpenSSL`` (the ``bench`` extra)."""
    try:
        import OpenSSL  # noqa: F401
        import twisted.mail.pop3  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"the twisted peer needs {exc.name}: pip install -e '.[bench]'") from exc


# How each Dovecot peer reuses its processes: (pop3-login, pop3) ``service_count = 0``.
DOVECOT_MODES = {
    "dovecot": (False, False),
    "dovecot-hp": (True, False),
    "dovecot-sc0": (True, True),
}


@dataclass
class Dovecot(Server):
    passwd: Path = Path()
    uid: int = 0
    gid: int = 0
    reuse_login: bool = False  # service_count = 0 for pop3-login
    reuse_pop3: bool = False  # service_count = 0 for pop3
    max_clients: int = 10300

    @property
    def config_path(self) -> Path:
        return self.workdir / "dovecot.conf"

    def write_config(self) -> None:
        n = self.max_clients
        login = "service_count = 1"
        pop3 = "service_count = 1"
        if self.reuse_login:
            cores = os.cpu_count() or 1
            login = f"service_count = 0\n  process_min_avail = {cores}\n  vsz_limit = 1G"
        if self.reuse_pop3:
            pop3 = "service_count = 0"
        run = self.workdir / "run"
        state = self.workdir / "state"
        for d in (run, state):
            d.mkdir(exist_ok=True)
        # Dovecot 2.3 syntax (2.4 renamed most of these settings).
        self.config_path.write_text(
            f"""base_dir = {run}
state_dir = {state}
log_path = {self.log}
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {self.uid}
last_valid_uid = {self.uid}
first_valid_gid = {self.gid}
mail_location = maildir:{self.mail_root}/%u/Maildir
default_process_limit = {n}
default_client_limit = {n + 500}
default_vsz_limit = 256M
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.passwd}
}}
userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={self.mail_root}/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.plain_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
  process_limit = {n}
  {login}
}}
service pop3 {{
  process_limit = {n}
  {pop3}
}}
service auth {{
  client_limit = {n + 500}
}}
service anvil {{
  client_limit = {n + 500}
}}
"""
        )

    def command(self) -> list[str]:
        self.write_config()
        check = subprocess.run(
            ["doveconf", "-c", str(self.config_path), "-n"], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"doveconf rejects {self.config_path}: {check.stderr}")
        return ["dovecot", "-F", "-c", str(self.config_path)]


def ensure_dovecot() -> None:
    """Install dovecot-pop3d with apt-get when missing and we may (root)."""
    if shutil.which("dovecot") and shutil.which("doveconf"):
        return
    if os.geteuid() != 0:
        raise RuntimeError("dovecot is not installed; install dovecot-pop3d (needs root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "dovecot-pop3d"], check=True, env=env)


def twisted_version() -> str:
    """Twisted's version, or "" when it is not installed (the run then has no Twisted peer)."""
    try:
        return importlib.metadata.version("twisted")
    except importlib.metadata.PackageNotFoundError:
        return ""


def dovecot_version() -> str:
    out = subprocess.run(["dovecot", "--version"], capture_output=True, text=True)
    return out.stdout.strip()
