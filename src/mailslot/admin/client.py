"""The CLI's side of the admin socket: one request, one response (blocking).

The socket file must belong to root or to this user: a socket someone else made at that path
gets no request.
"""

from __future__ import annotations

import contextlib
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
from mailslot.admin.sockets import AdminSocketError, NotOwned, connect

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
        sock = connect(path, timeout, {0, os.geteuid()})
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotRunning(f"no server answers on {path}: is mailslot running?") from None
    except PermissionError:
        raise Denied(
            f"permission denied: {path} (run as root or as the user that started the server)"
        ) from None
    except NotOwned as exc:
        raise Denied(str(exc)) from None
    except AdminSocketError as exc:
        raise NotRunning(str(exc)) from None
    except (TimeoutError, OSError) as exc:
        raise NotRunning(f"cannot connect to {path}: {exc}") from None
    with sock:
        try:
            # A server that answered (a refusal) before reading: its answer may be there.
            with contextlib.suppress(BrokenPipeError):
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
