"""The admin server's answers for one worker, with fake sessions (the fan-out and the real
sessions are in tests/integration/test_admin_socket.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailslot.admin.protocol import Request
from mailslot.admin.server import AdminServer, same_address
from mailslot.admin.sockets import AdminEndpoints
from mailslot.auth.memory import MemoryAuthenticator
from mailslot.server.session import SessionView
from mailslot.store.memory import MemoryStore


@dataclass
class FakeSession:
    user: str | None
    address: str
    kicked: bool = False

    def view(self) -> SessionView | None:
        if self.user is None or self.kicked:
            return None
        return SessionView(
            "id1", self.user, self.address, f"{self.address}:1", "[::]:995", "TLSv1.3", 0.0, 2, 1
        )

    def kick(self) -> bool:
        if self.kicked:
            return False
        self.kicked = True
        return True


@dataclass
class FakeHost:
    live: list[FakeSession] = field(default_factory=list)
    worker: int = 3
    store: object = field(default_factory=MemoryStore)
    users: object = field(default_factory=lambda: MemoryAuthenticator({"alice": "pw"}))

    def sessions(self) -> list[FakeSession]:
        return self.live


@pytest.fixture
def admin(tmp_path: Path) -> AdminServer:
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    endpoints = AdminEndpoints(listening, tmp_path / "admin.sock", 0)
    host = FakeHost(
        [
            FakeSession("alice", "::ffff:192.0.2.7"),
            FakeSession("bob", "192.0.2.8"),
            FakeSession(None, "192.0.2.7"),  # not logged in yet
        ]
    )
    server = AdminServer(endpoints, host, "node-a")  # type: ignore[arg-type]
    yield server
    listening.close()


def test_who_lists_logged_in_sessions_only(admin: AdminServer) -> None:
    response, after = asyncio.run(admin.handle(Request("who"), fan_out=False))
    assert after is None and response.ok
    sessions = response.result["sessions"]
    assert [s["user"] for s in sessions] == ["alice", "bob"]
    assert sessions[0]["since"] == "1970-01-01T00:00:00Z"
    assert sessions[0]["worker"] == {"pid": admin.pid, "index": 3, "node": "node-a"}
    assert (sessions[0]["retrieved"], sessions[0]["deleted"]) == (2, 1)


def test_kick_by_address_takes_mapped_and_unauthenticated_clients(admin: AdminServer) -> None:
    response, _ = asyncio.run(admin.handle(Request("kick", address="192.0.2.7"), fan_out=False))
    assert response.result["kicked"] == 2
    users = [s["user"] for s in response.result["sessions"]]
    assert users == ["alice", None]
    again, _ = asyncio.run(admin.handle(Request("kick", address="192.0.2.7"), fan_out=False))
    assert again.result["kicked"] == 0


def test_a_worker_is_asked_only_who_and_kick(admin: AdminServer) -> None:
    for command in ("reload", "stop"):
        response, after = asyncio.run(admin.handle(Request(command), fan_out=False))  # type: ignore[arg-type]
        assert not response.ok and response.code == "usage" and after is None


@pytest.mark.parametrize(
    ("address", "wanted", "same"),
    [
        ("192.0.2.7", "192.0.2.7", True),
        ("::ffff:192.0.2.7", "192.0.2.7", True),
        ("192.0.2.7", "::ffff:192.0.2.7", True),
        ("2001:db8::1", "2001:db8:0::1", True),
        ("192.0.2.7", "192.0.2.70", False),
        ("unix", "192.0.2.7", False),
    ],
)
def test_same_address(address: str, wanted: str, same: bool) -> None:
    assert same_address(address, wanted) is same


def test_mailbox_status_of_an_unknown_user_or_store(admin: AdminServer) -> None:
    unknown, _ = asyncio.run(admin.handle(Request("mailbox-status", user="zed"), fan_out=True))
    assert not unknown.ok and unknown.code == "nouser"
    memory, _ = asyncio.run(admin.handle(Request("mailbox-status", user="alice"), fan_out=True))
    assert not memory.ok and memory.code == "unavailable"
    assert "MemoryStore" in memory.error


def test_a_bad_request_over_a_real_socket_is_answered_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mailslot.admin.protocol import decode_response
    from mailslot.admin.sockets import bind_admin_socket, connect

    async def exchange() -> bytes:
        listening = bind_admin_socket(tmp_path / "admin.sock")
        server = AdminServer(
            AdminEndpoints(listening, tmp_path / "admin.sock", 0),
            FakeHost(),  # type: ignore[arg-type]
            "node-a",
        )
        await server.start()
        try:
            client = await asyncio.to_thread(connect, tmp_path / "admin.sock", 5)
            with client:
                await asyncio.to_thread(client.sendall, b'{"version": 1, "command": "rm"}\n')
                return await asyncio.to_thread(client.recv, 65536)
        finally:
            await server.close()
            listening.close()

    caplog.set_level(logging.INFO, logger="mailslot.admin")
    response = decode_response(asyncio.run(exchange()))
    assert not response.ok and response.code == "usage"
    assert "unknown command" in response.error
    assert "admin: bad request from uid" in caplog.text
