"""A real ``mailslot serve`` under systemd's protocols: sd_notify(3) and sd_listen_fds(3).

systemd itself is not started: the test plays its part, as the protocols are plain (a datagram
socket named by ``NOTIFY_SOCKET``; listening sockets at descriptor 3 on with ``LISTEN_PID``
and ``LISTEN_FDS``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.server import STARTUP_DEADLINE, ServerFactory, wait_for_greeting

NOTIFY_DEADLINE = 30.0  # seconds to wait for a datagram; a safety net, not a threshold


def _receive(sock: socket.socket) -> str:
    sock.settimeout(NOTIFY_DEADLINE)
    return sock.recv(4096).decode()


@pytest.mark.parametrize("workers", [1, 2])
def test_systemd_hears_ready_reloading_and_stopping_from_the_main_process_only(
    mailslot_factory: ServerFactory, tmp_path: Path, workers: int
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        server = mailslot_factory(
            env={"NOTIFY_SOCKET": str(tmp_path / "notify")},
            extra_sections={"server": {"workers": workers}},
        )
        assert server.process is not None
        assert _receive(notify) == "READY=1\nSTATUS=serving"

        server.process.send_signal(signal.SIGHUP)
        reloading = _receive(notify).split("\n")
        assert reloading[0] == "RELOADING=1"
        assert reloading[1].startswith("MONOTONIC_USEC=")
        assert _receive(notify) == "READY=1\nSTATUS=serving"
        # The server still serves after the reload.
        host, port = server.implicit
        wait_for_greeting(
            host,
            port,
            server.tls_files.client_context(),
            time.monotonic() + STARTUP_DEADLINE,
            server.process,
        )

        assert server.stop() == 0
        assert _receive(notify) == "STOPPING=1"
        # Nothing more: the workers never speak to systemd themselves.
        notify.setblocking(False)
        with pytest.raises(BlockingIOError):
            notify.recv(4096)


def test_a_listener_takes_the_socket_systemd_passed(
    mailslot_factory: ServerFactory, tmp_path: Path
) -> None:
    server = mailslot_factory(start=False)
    host, port = server.starttls
    # Held here, listening: a server that bound the port itself would fail (EADDRINUSE).
    passed = socket.create_server((host, port), backlog=16)

    def at_descriptor_3() -> None:  # what systemd does between fork and exec
        os.dup2(passed.fileno(), 3)

    command = [sys.executable, "-m", "mailslot", "serve", "--config", str(server.config_path)]
    script = 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'  # the pid of the process that reads them
    with server.log_path.open("ab") as log:
        process = subprocess.Popen(
            ["sh", "-c", script, "sh", *command],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=server.directory,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=at_descriptor_3,
            close_fds=False,
        )
    server.process = process  # stopped by the fixture
    passed.close()
    deadline = time.monotonic() + STARTUP_DEADLINE
    assert wait_for_greeting(host, port, None, deadline, process).startswith(b"+OK")
    implicit_host, implicit_port = server.implicit  # bound by the server itself
    wait_for_greeting(
        implicit_host, implicit_port, server.tls_files.client_context(), deadline, process
    )
    assert f"pop3 {host}:{port}: socket passed by systemd" in server.log()
