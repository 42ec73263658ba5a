"""The CLI's side of the admin socket: one request, one response (blocking).

The server on the other end must be root or this user (``SO_PEERCRED``): a socket someone
else made at that path gets no request.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mailslot.admin.protocol import (
    MAX_LINE,
    AdminProtocolError,
    Request,
    Response,
    decode_response,
    encode_request,
)
from mailslot.admin.sockets import AdminSocketError, connect, peer_credentials

#: Long enough for a fan-out over workers that each wait for a slow one.
TIMEOUT = 30.0


class NotRunning(Exception):
    """No server answers on the socket."""


class Denied(Exception):
    """This user may not use the socket."""


def call(path: Path, request: Request, timeout: float = TIMEOUT) -> Response:
    """Send ``request`` to the server at ``path``; its response.

    Raises :class:`NotRunning`, :class:`Denied`, or :class:`AdminProtocolError` for an answer
    that is not one.
    """
    try:
        sock = connect(path, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotRunning(f"no server answers on {path}: is mailslot running?") from None
    except PermissionError:
        raise Denied(
            f"permission denied: {path} (run as root or as the user that started the server)"
        ) from None
    except AdminSocketError as exc:
        raise NotRunning(str(exc)) from None
    except (TimeoutError, OSError) as exc:
        raise NotRunning(f"cannot connect to {path}: {exc}") from None
    with sock:
        _, uid, _ = peer_credentials(sock)
        if uid not in (0, os.geteuid()):
            raise Denied(f"{path} is served by uid {uid}, neither root nor this user")
        try:
            sock.sendall(encode_request(request))
            line = _read_line(sock)
        except (TimeoutError, OSError) as exc:
            raise NotRunning(f"no answer on {path}: {exc}") from None
    if not line:
        raise NotRunning(f"the server closed {path} without an answer")
    return decode_response(line)


def _read_line(sock: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_LINE:
            raise AdminProtocolError(f"a response is at most {MAX_LINE} octets")
    return bytes(data)
