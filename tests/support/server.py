"""Run ``python -m mailslot serve --config FILE`` as a subprocess on 127.0.0.1/::1 ports.

The config file, passwd file and mail root live in one directory per server.  :meth:`start`
returns once every POP3 listener accepts a connection and greets (TLS first on implicit-TLS
listeners); :meth:`stop` sends SIGTERM and falls back to SIGKILL.  stdout and stderr go to
``server.log`` in the directory, which the fixtures print when a test fails;
:meth:`MailslotServer.wait_for_log` waits for a line of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .maildir import MaildirBuilder
from .passwd import DEFAULT_USERS, PasswdUser, write_passwd
from .tls import TlsFiles

# What the test configurations say when the tests run as root (here and in CI) and give no
# [server] user: a root-started server without one is refused (mailslot.privileges).
RUN_AS_ROOT = "the test suite runs as root"
STARTUP_DEADLINE = 15.0  # seconds for the server to come up; polling, not a threshold
STOP_DEADLINE = 15.0
LOG_DEADLINE = 15.0  # seconds for a log line to appear; polling, not a threshold
LOG_TAIL = 40  # lines of the log quoted when one does not appear


# Ports handed out by free_port() in this process: never handed out twice.
_HANDED_OUT: set[int] = set()
_FIRST_PORT = 10_000


def _ephemeral_start() -> int:
    """The first port of the kernel's range for outgoing connections (Linux), else 32768."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing is bound to right now, never the same twice in one test run.

    The kernel's choice for port 0 is not used: it comes from the ephemeral range, where the
    next client connection may take it before the server binds it, and two calls may get the
    same port once the first probe is closed.  Ports below that range are tried at random,
    each checked with a bind and remembered.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    last = max(_FIRST_PORT + 1000, _ephemeral_start())
    for _ in range(1000):
        port = random.randrange(_FIRST_PORT, last)
        if port in _HANDED_OUT:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port found below the ephemeral range")


@dataclass(frozen=True)
class Listener:
    tls: str  # "implicit" | "starttls" | "none"
    address: str = "127.0.0.1"
    port: int = 0  # 0: a free port is chosen
    protocol: str = "pop3"  # or "lmtp" (greets with 220, probed with LHLO-free QUIT)
    proxy_protocol: bool = False  # probed with a "PROXY UNKNOWN" header first
    proxy_trusted_networks: tuple[str, ...] = ()


DEFAULT_LISTENERS: tuple[Listener, ...] = (Listener("starttls"), Listener("implicit"))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_table(name: str, values: Mapping[str, Any], *, array: bool = False) -> str:
    header = f"[[{name}]]" if array else f"[{name}]"
    body = "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items())
    return f"{header}\n{body}\n"


def wait_for_greeting(
    address: str,
    port: int,
    context: ssl.SSLContext | None,
    deadline: float,
    process: subprocess.Popen[bytes] | None = None,
    ready: bytes = b"+OK",
    preamble: bytes = b"",
) -> bytes:
    """Poll until ``address:port`` accepts, (handshakes and) greets; return the greeting.

    Gives up early if ``process`` exits.  ``preamble`` (a PROXY header) is sent first.
    """
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TimeoutError(f"the server exited with status {process.returncode}")
        try:
            with socket.create_connection((address, port), timeout=5.0) as raw:
                sock: socket.socket = raw
                raw.sendall(preamble)
                if context is not None:
                    sock = context.wrap_socket(raw, server_hostname="localhost")
                reader = sock.makefile("rb")
                greeting = reader.readline()
                if greeting.startswith(ready):
                    # End the probe politely (QUIT, its reply, close_notify) so the server
                    # does not hold a session open for it while the test runs.
                    sock.sendall(b"QUIT\r\n")
                    reader.readline()
                    if isinstance(sock, ssl.SSLSocket):
                        with contextlib.suppress(OSError):
                            sock.unwrap()
                    return greeting
                last_error = RuntimeError(f"greeting was {greeting!r}")
        except OSError as exc:
            last_error = exc
        time.sleep(0.05)  # polling for the server to come up, the one allowed sleep
    raise TimeoutError(f"{address}:{port} did not greet: {last_error!r}")


class MailslotServer:
    def __init__(
        self,
        directory: Path,
        tls_files: TlsFiles,
        *,
        listeners: Sequence[Listener] = DEFAULT_LISTENERS,
        users: Sequence[PasswdUser] = DEFAULT_USERS,
        extra_users: Sequence[PasswdUser] = (),
        allow_plaintext: bool = False,
        failure_delay: float = 0.2,
        failure_delay_max: float = 0.4,
        tls_profile: str | None = None,
        tls_options: Mapping[str, Any] | None = None,
        limits: Mapping[str, Any] | None = None,
        extra_sections: Mapping[str, Mapping[str, Any]] | None = None,
        store: Mapping[str, Any] | None = None,
        auth: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        run_as_root: str | None = RUN_AS_ROOT,
        file_limit: int | None = None,
    ) -> None:
        """``run_as_root``: written to ``[server]`` when the tests run as root and
        ``extra_sections`` give the server no ``user``; ``None`` writes neither.
        ``tls_options``: more ``[tls]`` keys.
        ``file_limit``: the server's RLIMIT_NOFILE, soft and hard (it raises soft to hard).
        ``store``: more ``[store]`` keys (``backend = "postgresql"``, ``dsn``, ...); ``auth``:
        more ``[auth]`` keys."""
        self.directory = directory
        self.tls_files = tls_files
        directory.mkdir(parents=True, exist_ok=True)
        self.listeners = [
            replace(lst, port=lst.port or free_port(lst.address)) for lst in listeners
        ]
        self.users = {u.name: u for u in (*users, *extra_users)}
        self.mail_root = directory / "mail"
        self.mail_root.mkdir(exist_ok=True)
        self.passwd_path = write_passwd(directory / "users", list(self.users.values()))
        self.config_path = directory / "mailslot.toml"
        self.log_path = directory / "server.log"
        self.env = dict(env or {})
        self.file_limit = file_limit
        self.process: subprocess.Popen[bytes] | None = None
        config = "".join(
            toml_table(
                "listener",
                {"address": lst.address, "port": lst.port, "tls": lst.tls}
                | ({} if lst.protocol == "pop3" else {"protocol": lst.protocol})
                | ({"proxy_protocol": True} if lst.proxy_protocol else {})
                | (
                    {"proxy_trusted_networks": list(lst.proxy_trusted_networks)}
                    if lst.proxy_trusted_networks
                    else {}
                ),
                array=True,
            )
            for lst in self.listeners
        )
        config += toml_table(
            "tls",
            {"certificate": tls_files.certificate, "private_key": tls_files.private_key}
            | ({} if tls_profile is None else {"profile": tls_profile})
            | dict(tls_options or {}),
        )
        config += toml_table(
            "auth",
            {
                # relative to the config file, as an administrator would write it
                "passwd_file": self.passwd_path.name,
                "allow_plaintext_without_tls": allow_plaintext,
                "failure_delay": failure_delay,
                "failure_delay_max": failure_delay_max,
                **(auth or {}),
            },
        )
        sections = {name: dict(values) for name, values in (extra_sections or {}).items()}
        # extra_sections["store"] adds to (or replaces the maildir of) the one [store] table.
        store = (
            {"maildir": f"{self.mail_root}/{{user}}/Maildir"}
            | dict(store or {})
            | sections.pop("store", {})
        )
        config += toml_table("store", store)
        if limits:
            config += toml_table("limits", limits)
        # The admin socket in the server's directory, not /run/mailslot: tests run side by side.
        sections.setdefault("admin", {}).setdefault("socket", str(directory / "admin.sock"))
        self.admin_socket = Path(sections["admin"]["socket"])
        server = sections.setdefault("server", {})
        if os.geteuid() == 0 and run_as_root is not None and "user" not in server:
            server.setdefault("run_as_root", run_as_root)
        for name, values in sections.items():
            if values:
                config += toml_table(name, values)
        self.config_path.write_text(config, encoding="utf-8")

    # -- addresses ---------------------------------------------------------------------------

    def listener(
        self, tls: str, address: str | None = None, protocol: str = "pop3"
    ) -> tuple[str, int]:
        for lst in self.listeners:
            if lst.protocol != protocol:
                continue
            if lst.tls == tls and (address is None or lst.address == address):
                return lst.address, lst.port
        raise LookupError(f"no {tls} listener on {address or 'any address'}")

    @property
    def starttls(self) -> tuple[str, int]:
        return self.listener("starttls")

    @property
    def implicit(self) -> tuple[str, int]:
        return self.listener("implicit")

    def maildir(self, user: str) -> Path:
        return self.mail_root / user / "Maildir"

    def builder(self, user: str = "alice", **kwargs: Any) -> MaildirBuilder:
        return MaildirBuilder(self.maildir(user), **kwargs)

    def password(self, user: str) -> str:
        return self.users[user].password

    # -- process -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> MailslotServer:
        assert self.process is None or self.process.poll() is not None, "already running"
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailslot", "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=env,
                preexec_fn=None if self.file_limit is None else self._limit_files,
            )
        deadline = time.monotonic() + STARTUP_DEADLINE
        context = self.tls_files.client_context()
        try:
            for lst in self.listeners:
                wait_for_greeting(
                    lst.address,
                    lst.port,
                    context if lst.tls == "implicit" else None,
                    deadline,
                    self.process,
                    b"+OK" if lst.protocol == "pop3" else b"220",
                    b"PROXY UNKNOWN\r\n" if lst.proxy_protocol else b"",
                )
        except TimeoutError as exc:
            self.kill()
            raise RuntimeError(f"mailslot did not come up: {exc}\n{self.log()}") from None
        return self

    def _limit_files(self) -> None:
        assert self.file_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.file_limit, self.file_limit))

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a deadline; return the exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> MailslotServer:
        self.stop()
        return self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no server log)"

    def wait_for_log(self, text: str, count: int = 1, deadline: float = LOG_DEADLINE) -> list[str]:
        """Poll until at least ``count`` lines of the log hold ``text``; return those lines.

        A running server's line may reach the file after the reply the test has read: a
        worker writes what one turn of its event loop logged at the loop's next turn
        (:class:`mailslot.log.LoopHandler`), and a session's last line follows its last
        reply.  A test that looks for a line of a running server waits for it here.
        Lines are split at ``\\n`` only, as the server ends them.  After ``deadline``
        seconds it fails with the log's tail.
        """
        end = time.monotonic() + deadline
        while True:
            log = self.log()
            lines = [line for line in log.split("\n") if text in line]
            if len(lines) >= count:
                return lines
            if time.monotonic() >= end:
                tail = "\n".join(log.split("\n")[-LOG_TAIL:])
                raise AssertionError(
                    f"{len(lines)} of {count} log lines with {text!r} after {deadline} s;"
                    f" the log ends:\n{tail}"
                )
            time.sleep(0.02)  # polling the log file

    def __enter__(self) -> MailslotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


ServerFactory = Callable[..., MailslotServer]
