"""What each worker runs for the admin socket: it answers, and asks the other workers.

Every worker accepts on the one admin socket the starting process bound (as every worker
accepts on the POP3 sockets), so whichever worker is free takes a request.  That worker
answers for the whole node: it asks every other worker over the worker's own socket in
``NAME.workers/`` (:mod:`mailslot.admin.sockets`) with the same request, and merges the
answers with its own.  A worker retiring after a reload no longer takes admin requests but
keeps its own socket until it exits, so its sessions are listed and can be kicked.

``reload`` and ``stop`` are for the process that handles SIGHUP and SIGTERM: a lone worker
signals itself; a supervisor's worker, which has dropped its privileges and so may not signal
a root parent (kill(2)), writes a byte to the supervisor's control pipe and sends it SIGCONT,
which kill(2) allows within a session (:mod:`mailslot.server.supervisor`).

Credentials are checked on every connection (``SO_PEERCRED``): the admin socket takes root and
the server's owner, a worker's socket root and the workers' own user.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from mailslot.admin import mailbox
from mailslot.admin.protocol import (
    MAX_LINE,
    AdminProtocolError,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from mailslot.admin.sockets import AdminEndpoints, bind_peer, peer_credentials
from mailslot.auth.base import Authenticator, AuthError
from mailslot.log import escape
from mailslot.server.session import Session, SessionView
from mailslot.store.base import Store

logger = logging.getLogger("mailslot.admin")

#: How long a worker waits for another's answer; one that does not answer is reported.
PEER_TIMEOUT = 10.0
_READ_TIMEOUT = 10.0
RELOAD, STOP = b"H", b"T"  # the control pipe's bytes
_GONE = Response.success({})  # the answer of a worker that no longer exists


class Host(Protocol):
    """The worker as the admin server sees it (:class:`mailslot.server.runner.Application`)."""

    worker: int
    store: Store
    users: Authenticator

    def sessions(self) -> Iterable[Session]: ...


def view_to_json(view: SessionView, worker: dict[str, Any]) -> dict[str, Any]:
    since = datetime.datetime.fromtimestamp(view.since, datetime.UTC)
    return {
        "session": view.id,
        "user": view.user,
        "address": view.address,
        "client": view.client,
        "listener": view.listener,
        "tls": view.tls,
        "since": since.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "retrieved": view.retrieved,
        "deleted": view.deleted,
        "worker": worker,
    }


class AdminServer:
    """The admin socket and this worker's own socket; see the module docstring."""

    def __init__(self, endpoints: AdminEndpoints, host: Host, node: str) -> None:
        self.endpoints = endpoints
        self.host = host
        self.node = node
        self.pid = os.getpid()
        self._shared: asyncio.AbstractServer | None = None
        self._peer: asyncio.AbstractServer | None = None
        self._peer_name: Path | None = None
        self._after: list[Callable[[], None]] = []

    @property
    def worker(self) -> dict[str, Any]:
        return {"pid": self.pid, "index": self.host.worker, "node": self.node}

    async def start(self) -> None:
        self._shared = await asyncio.start_unix_server(
            self._serve_shared, sock=self.endpoints.listening, limit=MAX_LINE
        )
        if self.endpoints.peers is not None:
            sock = bind_peer(self.endpoints.peers, self.pid)
            self._peer_name = self.endpoints.peers / str(self.pid)
            self._peer = await asyncio.start_unix_server(
                self._serve_peer, sock=sock, limit=MAX_LINE
            )

    def stop_accepting(self) -> None:
        """Retiring or stopping: the other workers (or none) take admin requests now."""
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    async def close(self) -> None:
        self.stop_accepting()
        if self._peer is not None:
            self._peer.close()
            self._peer = None
        if self._peer_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._peer_name)

    # ------------------------------------------------------------------ connections

    async def _serve_shared(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._serve(reader, writer, self.endpoints.allows, fan_out=True)

    async def _serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, _worker_peer, fan_out=False)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        allows: Callable[[socket.socket], tuple[bool, int, int]],
        *,
        fan_out: bool,
    ) -> None:
        after: Callable[[], None] | None = None
        try:
            allowed, pid, uid = allows(writer.get_extra_info("socket"))
            # The request is read even from a caller refused, so that the answer is not lost
            # to a reset (a close with unread data sends RST).
            try:
                async with asyncio.timeout(_READ_TIMEOUT):
                    line = await reader.readline()
                request = decode_request(line) if allowed else None
            except AdminProtocolError as exc:
                logger.info("admin: bad request from uid %d: %s", uid, escape(exc))
                response = Response.failure(f"bad request: {exc}", "usage")
            except (TimeoutError, ValueError):
                logger.info("admin: bad request from uid %d: no complete line", uid)
                response = Response.failure("bad request: no complete line", "usage")
            else:
                if request is None:
                    logger.warning("admin: refused a connection from uid %d (pid %d)", uid, pid)
                    response = Response.failure("permission denied", "denied")
                else:
                    response, after = await self.handle(request, fan_out=fan_out, uid=uid)
            writer.write(encode_response(response))
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            logger.info("admin: connection error: %s", exc)
        except Exception:
            logger.exception("admin: internal error")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if after is not None:
            after()

    # ------------------------------------------------------------------ requests

    async def handle(
        self, request: Request, *, fan_out: bool, uid: int = 0
    ) -> tuple[Response, Callable[[], None] | None]:
        """The response to ``request``, and what to do once it is sent (reload, stop)."""
        command = request.command
        if command == "who":
            sessions, unreachable = await self._gather(request, fan_out, self._who)
            return Response.success({"sessions": sessions, "unreachable": unreachable}), None
        if command == "kick":
            if fan_out and request.user is not None:
                request = Request("kick", user=await self._canonical(request.user))
            kicked, unreachable = await self._gather(request, fan_out, self._kick)
            if kicked:
                what = f"user={request.user}" if request.user else f"address={request.address}"
                logger.info("admin: kicked %d session(s) of %s (uid %d)", len(kicked), what, uid)
            return (
                Response.success(
                    {"kicked": len(kicked), "sessions": kicked, "unreachable": unreachable}
                ),
                None,
            )
        if not fan_out:
            return Response.failure(f"{command} is not asked of a worker", "usage"), None
        if command == "mailbox-status":
            assert request.user is not None
            sessions, unreachable = await self._gather(Request("who"), True, self._who)
            try:
                status = await mailbox.status(self.host.store, self.host.users, request.user)
            except mailbox.NoSuchUser:
                return Response.failure(f"no user {request.user!r}", "nouser"), None
            except mailbox.Unavailable as exc:
                return Response.failure(str(exc), "unavailable"), None
            holders = [s for s in sessions if s["user"] == status["user"]]
            lease = status.get("lease")
            status["locked"] = (
                bool(holders) or bool(status.get("lock_pids")) or bool(lease and lease["live"])
            )
            status["locked_by"] = holders
            status["unreachable"] = unreachable
            return Response.success(status), None
        if command == "reload":
            logger.info("admin: reload asked (uid %d)", uid)
            return Response.success({"reloading": True}), self._control(RELOAD)
        assert command == "stop"
        logger.info("admin: stop asked (uid %d)", uid)
        return Response.success({"stopping": True}), self._control(STOP)

    async def _canonical(self, name: str) -> str:
        """The name sessions are listed under ([auth] username_format: ``Alice`` logs in as
        ``alice``); ``name`` itself when the user database does not know it (any more)."""
        try:
            user = await self.host.users.lookup(name)
        except AuthError:  # the database is down: kick by the name as given
            return name
        return name if user is None else user.name

    def _control(self, what: bytes) -> Callable[[], None]:
        pipe = self.endpoints.control

        def act() -> None:
            if pipe is None:
                os.kill(os.getpid(), signal.SIGHUP if what == RELOAD else signal.SIGTERM)
                return
            os.write(pipe, what)
            os.kill(os.getppid(), signal.SIGCONT)

        return act

    def _who(self, request: Request) -> list[dict[str, Any]]:
        views = (session.view() for session in self.host.sessions())
        return [view_to_json(v, self.worker) for v in views if v is not None]

    def _kick(self, request: Request) -> list[dict[str, Any]]:
        kicked = []
        for session in list(self.host.sessions()):
            if request.user is not None:
                match = session.user == request.user
            else:
                match = same_address(session.address, request.address)
            if not match:
                continue
            view = session.view()
            if session.kick():
                if view is not None:
                    kicked.append(view_to_json(view, self.worker))
                else:  # not logged in yet (kicked by address)
                    kicked.append(
                        {
                            "session": None,
                            "user": None,
                            "address": session.address,
                            "worker": self.worker,
                        }
                    )
        return kicked

    async def _gather(
        self,
        request: Request,
        fan_out: bool,
        local: Callable[[Request], list[dict[str, Any]]],
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """``local(request)`` here, and on every other worker when ``fan_out``; the pids of
        workers that did not answer."""
        found = local(request)
        unreachable: list[int] = []
        if not fan_out or self.endpoints.peers is None:
            return found, unreachable
        key = "sessions"
        asks: list[Awaitable[Response | None]] = []
        pids: list[int] = []
        for pid in _peer_pids(self.endpoints.peers):
            if pid != self.pid:
                pids.append(pid)
                asks.append(_ask(self.endpoints.peers / str(pid), request))
        for pid, answer in zip(pids, await asyncio.gather(*asks), strict=True):
            if answer is None:
                unreachable.append(pid)
            elif answer.ok:
                found.extend(answer.result.get(key, []))
        return found, unreachable


def _worker_peer(sock: socket.socket) -> tuple[bool, int, int]:
    """A worker's own socket takes root and the workers' user (the other workers)."""
    pid, uid, _ = peer_credentials(sock)
    return uid in (0, os.geteuid()), pid, uid


def same_address(address: str, wanted: str | None) -> bool:
    """Whether ``address`` is ``wanted``, an IPv4 client on a dual-stack listener (which
    reports ``::ffff:192.0.2.7``) included."""
    if wanted is None:
        return False
    try:
        ip, other = ipaddress.ip_address(address), ipaddress.ip_address(wanted)
    except ValueError:
        return False
    return _unmapped(ip) == _unmapped(other)


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> object:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _peer_pids(peers: Path) -> list[int]:
    try:
        names = os.listdir(peers)
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


async def _ask(path: Path, request: Request) -> Response | None:
    """``request`` of the worker at ``path``; ``None`` if it is gone or does not answer.

    The socket of a process that no longer exists (a worker killed with SIGKILL) is removed.
    """
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        async with asyncio.timeout(PEER_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(
                f"/proc/self/fd/{directory}/{path.name}", limit=MAX_LINE
            )
            try:
                sock: socket.socket = writer.get_extra_info("socket")
                _, uid, _ = peer_credentials(sock)
                if uid not in (0, os.geteuid()):
                    logger.warning("admin: %s belongs to uid %d, not asking it", path, uid)
                    return None
                writer.write(encode_request(request))
                await writer.drain()
                return decode_response(await reader.readline())
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
    except ConnectionRefusedError:
        # A worker killed with SIGKILL left it; a live one is only between bind and listen.
        if not _alive(int(path.name)):
            with contextlib.suppress(OSError):
                os.unlink(path.name, dir_fd=directory)
            return _GONE  # no worker, no sessions: nothing to report
        return None
    except (TimeoutError, OSError, ValueError) as exc:
        logger.warning("admin: worker socket %s did not answer: %s", path, exc)
        return None
    finally:
        os.close(directory)
