"""A private HAProxy in front of several ``mailslot serve`` nodes: TCP mode, PROXY v2.

:func:`render_config` writes the configuration docs/deployment.md recommends (the test
suite checks that the guide's block is exactly what it renders for the guide's addresses,
and that ``haproxy -c`` accepts it): one POP3S frontend, a ``leastconn`` backend whose
servers get ``send-proxy-v2`` and a TLS health check that sends a PROXY v2 ``LOCAL`` header
(``check-send-proxy``) and expects the ``+OK`` greeting.  TLS passes through HAProxy: the
nodes terminate it, as the client's certificate checks expect.

:class:`HAProxy` runs Debian's ``haproxy`` in the foreground (``-db``) with that config plus,
for the tests, one frontend pinned to each node, on free 127.0.0.1 ports; its admin socket
(``show stat``) tells whether a node is up.  Every process started is killed at :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .server import free_port

START_DEADLINE = 15.0  # polling for HAProxy's ports and its nodes; not a threshold


@dataclass(frozen=True)
class Node:
    """One mailslot node as HAProxy names and reaches it (its PROXY, implicit-TLS listener)."""

    name: str
    address: str
    port: int


def render_config(
    *,
    bind: str,
    nodes: Sequence[Node],
    ca_file: str,
    admin_socket: str,
    check_sni: str = "localhost",
) -> str:
    """The HAProxy configuration of docs/deployment.md for these addresses."""
    servers = "".join(f"    server {n.name} {n.address}:{n.port}\n" for n in nodes)
    return (
        "global\n"
        "    maxconn 4000\n"
        f"    stats socket {admin_socket} mode 600 level admin\n"
        "\n"
        "defaults\n"
        "    mode tcp\n"
        "    option dontlognull\n"
        "    timeout connect 5s\n"
        "    timeout check 5s\n"
        "    # A node that refuses the connection (down, restarting): try another one.\n"
        "    retries 2\n"
        "    option redispatch\n"
        "    # Longer than mailslot's own idle timeout ([limits] idle_timeout, 10 minutes by\n"
        "    # default), so that mailslot, not HAProxy, ends an idle session, with a reply.\n"
        "    timeout client 11m\n"
        "    timeout server 11m\n"
        "\n"
        "frontend pop3s\n"
        f"    bind {bind}\n"
        "    default_backend mailslot_pop3s\n"
        "\n"
        "backend mailslot_pop3s\n"
        "    balance leastconn\n"
        "    # The health check: TLS to the node, a PROXY v2 LOCAL header first\n"
        "    # (check-send-proxy), then the greeting must be +OK; QUIT ends it politely.\n"
        "    option tcp-check\n"
        "    tcp-check expect rstring ^\\+OK\n"
        "    tcp-check send QUIT\\r\\n\n"
        "    tcp-check expect rstring ^\\+OK\n"
        "    default-server send-proxy-v2 check check-send-proxy check-ssl"
        f" verify required ca-file {ca_file} check-sni {check_sni} inter 1s fall 2 rise 1\n"
        f"{servers}"
    )


def pinned_frontends(listen: Sequence[tuple[str, int]], nodes: Sequence[Node]) -> str:
    """Test-only frontends, one per node, each forwarding (with PROXY v2) to that node alone."""
    blocks = []
    for (address, port), node in zip(listen, nodes, strict=True):
        blocks.append(
            f"\nlisten pinned_{node.name}\n"
            f"    bind {address}:{port}\n"
            f"    server {node.name} {node.address}:{node.port} send-proxy-v2\n"
        )
    return "".join(blocks)


class HAProxyError(RuntimeError):
    """HAProxy refused its configuration or did not come up; the message has its output."""


class HAProxy:
    """A running private HAProxy; ``address`` is the POP3S frontend, ``pinned[i]`` node i's."""

    def __init__(self, program: str, nodes: Sequence[Node], ca_file: str) -> None:
        self.program = program
        self.nodes = list(nodes)
        self.directory = Path(tempfile.mkdtemp(prefix="mailslot-haproxy-"))
        self.address = ("127.0.0.1", free_port())
        self.pinned = [("127.0.0.1", free_port()) for _ in self.nodes]
        self.admin_socket = self.directory / "admin.sock"
        self.config_path = self.directory / "haproxy.cfg"
        self.log_path = self.directory / "haproxy.log"
        config = render_config(
            bind=f"{self.address[0]}:{self.address[1]}",
            nodes=self.nodes,
            ca_file=ca_file,
            admin_socket=str(self.admin_socket),
        )
        self.config_path.write_text(config + pinned_frontends(self.pinned, self.nodes))
        self.process: subprocess.Popen[bytes] | None = None

    def check(self) -> subprocess.CompletedProcess[str]:
        """``haproxy -c``: does HAProxy accept the configuration?"""
        return check_config(self.program, self.config_path)

    def start(self) -> HAProxy:
        checked = self.check()
        if checked.returncode != 0:
            raise HAProxyError(f"haproxy -c refused the config:\n{checked.stdout}{checked.stderr}")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.program, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        # HAProxy binds every frontend before it serves its admin socket; probing the
        # frontends themselves would open sessions on the nodes.
        deadline = time.monotonic() + START_DEADLINE
        try:
            while True:
                if self.process.poll() is not None:
                    raise HAProxyError(f"haproxy exited ({self.process.returncode}):\n{self.log()}")
                with contextlib.suppress(OSError):
                    self.admin("show info")
                    return self
                if time.monotonic() > deadline:
                    raise HAProxyError(f"haproxy's admin socket does not answer:\n{self.log()}")
                time.sleep(0.05)  # polling for HAProxy to come up
        except BaseException:
            self.stop()  # the caller never gets this object to stop
            raise

    def admin(self, command: str) -> str:
        """One command on the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each node's health as the POP3S backend sees it: ``UP``, ``DOWN``, ``UP 1/2``..."""
        text = self.admin("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "mailslot_pop3s" and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def wait_for(self, wanted: dict[str, str]) -> None:
        """Poll until the named nodes have the wanted health (``UP`` or ``DOWN``)."""
        deadline = time.monotonic() + START_DEADLINE
        while True:
            states = self.states()
            if all(states.get(name, "").split(" ")[0] == want for name, want in wanted.items()):
                return
            if time.monotonic() > deadline:
                raise HAProxyError(f"nodes are {states}, not {wanted}:\n{self.log()}")
            time.sleep(0.1)  # polling HAProxy's health checks

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no haproxy log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def check_config(program: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program, "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
