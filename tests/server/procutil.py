"""Looking at a ``mailslot serve`` process tree through /proc: workers and who holds a socket."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.wire import Pop3Wire

if TYPE_CHECKING:
    from tests.support.server import MailslotServer

POLL_DEADLINE = 15.0


def poll(condition: Any, what: str, deadline: float = POLL_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, found by scanning /proc/*/stat."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; fields follow the last ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening_inodes(port: int) -> list[int]:
    """Socket inodes of the IPv4 sockets listening on ``port``, one per listening socket."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "0A" and int(parts[1].split(":")[1], 16) == port:
            found.append(int(parts[9]))
    return found


def holders(pids: list[int], inode: int) -> list[int]:
    """Which of ``pids`` hold the socket ``inode`` open."""
    return [pid for pid in pids if inode in _socket_inodes(pid)]


def _established(server_port: int) -> dict[int, int]:
    """``{client port: server-side socket inode}`` for established IPv4 connections."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
        if state == "01" and int(local.split(":")[1], 16) == server_port:
            found[int(remote.split(":")[1], 16)] = inode
    return found


def serving_pids(pids: list[int], server_port: int, client_ports: list[int]) -> dict[int, int]:
    """``{client port: pid of the process holding the server side of that connection}``."""
    owners = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    connections = _established(server_port)
    return {
        port: owners[connections[port]]
        for port in client_ports
        if port in connections and connections[port] in owners
    }


def ready_workers(server: MailslotServer, count: int) -> list[int]:
    """Poll until ``count`` workers exist and each has greeted a connection.

    A worker that has greeted is in its serve loop, so its signal handlers are installed; a
    signal sent earlier would meet the default action and kill it.
    """
    assert server.process is not None
    pid = server.process.pid
    poll(lambda: len(children(pid)) == count, f"{count} worker processes")
    workers = children(pid)
    host, port = server.starttls
    seen: set[int] = set()

    def all_greeted() -> bool:
        wires = [Pop3Wire(host, port) for _ in range(8)]
        try:
            assert all(w.greeting.startswith(b"+OK") for w in wires)
            owners = serving_pids(workers, port, [w.sock.getsockname()[1] for w in wires])
            seen.update(owners.values())
        finally:
            for wire in wires:
                wire.close()
        return seen == set(workers)

    poll(all_greeted, "every worker to greet")
    return workers
