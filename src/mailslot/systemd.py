"""systemd integration: the service and socket units, readiness notifications, socket activation.

- :func:`notify` speaks the ``sd_notify(3)`` protocol: one datagram to ``$NOTIFY_SOCKET``
  (``READY=1`` once every listener serves, ``RELOADING=1`` with ``MONOTONIC_USEC`` on SIGHUP,
  ``STOPPING=1``).  Without the variable (not under systemd) it does nothing.
- :func:`listen_fds` takes the sockets systemd passed (``sd_listen_fds(3)``: ``LISTEN_PID``,
  ``LISTEN_FDS``, descriptors from 3), so that ports 110 and 995 can be bound by systemd and
  the server needs no privilege to bind them.
- :func:`service_unit` and :func:`socket_unit` write hardened units for a configuration
  (``mailslot systemd-unit``): the file system is read-only to the service but for the
  maildrops' root and the LMTP socket's directory, which they compute from the configuration.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

from mailslot.config import Config

SD_LISTEN_FDS_START = 3

# Each option and why, also listed in docs/systemd.md.
_HARDENING = """\
# The parent binds the ports and reads the key as root, the workers drop to [server] user:
# only these capabilities are ever needed.
CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_CHOWN CAP_DAC_READ_SEARCH
NoNewPrivileges=yes
ProtectSystem=strict
{read_write}PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
UMask=0077
"""


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``KEY=value`` lines) to systemd; False when not run by systemd."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError:
        return False
    return True


def ready(environ: Mapping[str, str] | None = None) -> bool:
    """Every listener serves (``Type=notify``)."""
    return notify("READY=1\nSTATUS=serving", environ)


def reloading(environ: Mapping[str, str] | None = None) -> bool:
    """A reload began; :func:`ready` says when it is over (``Type=notify-reload``, systemd
    253+, needs the monotonic time stamp; older ones ignore it)."""
    stamp = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={stamp}", environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", environ)


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The listening sockets systemd passed to this process, in order; [] if none.

    The variables are removed, as ``sd_listen_fds(1)`` does, so that no child (a worker)
    takes them for its own.
    """
    env = os.environ if environ is None else environ
    try:
        pid = int(env.get("LISTEN_PID", ""))
        count = int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if pid != os.getpid() or count <= 0:
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def _writable_paths(config: Config) -> list[str]:
    """What the service writes: the maildrops (below the store's root), LMTP sockets, the
    admin socket, and with ``[acme]`` its state directory and the certificate's directories."""
    from mailslot.store.confine import root_of

    paths = []
    root = root_of(config.store.maildir)
    if root != "/":
        paths.append(root.rstrip("/") or "/")
    for listener in config.listeners:
        if listener.path is not None:
            paths.append(str(listener.path.parent))
    if config.acme.enabled:  # its state, and where it writes the certificate (docs/acme.md)
        paths.append(str(config.acme.state_directory))
        for path in (config.tls.certificate, config.tls.private_key):
            if path is not None:
                paths.append(str(path.parent))
    paths.append(str(_admin_socket(config).parent))
    return sorted(set(paths))


def _admin_socket(config: Config) -> Path:
    from mailslot.admin.sockets import DEFAULT_SOCKET

    return config.admin.socket or DEFAULT_SOCKET


def service_unit(
    config: Config,
    config_path: Path,
    program: Sequence[str],
    *,
    socket_activated: bool = False,
) -> str:
    """A hardened ``mailslot.service`` for ``config`` (read from ``config_path``); ``program``
    is the command that runs mailslot (``["/usr/local/bin/mailslot"]``, say)."""
    writable = _writable_paths(config)
    if config.store.maildir.startswith(("~", "{home}")):
        # Maildirs in home directories: the homes must stay writable.
        read_write = "ProtectHome=no\nReadWritePaths=/home\n"
    else:
        read_write = "ProtectHome=yes\n"
    if _admin_socket(config).parent == Path("/run/mailslot"):
        # Under ProtectSystem=strict /run is read-only: systemd makes the directory.
        read_write += "RuntimeDirectory=mailslot\nRuntimeDirectoryMode=0755\n"
    if writable:
        # "-": a path that does not exist yet does not stop the service from starting.
        read_write += "ReadWritePaths=" + " ".join("-" + _quote(p) for p in writable) + "\n"
    stop_after = int(config.server.shutdown_timeout) + 10
    sockets = "Sockets=mailslot.socket\n" if socket_activated else ""
    requires = "Requires=mailslot.socket\nAfter=mailslot.socket\n" if socket_activated else ""
    return (
        "# mailslot.service, written by `mailslot systemd-unit` (docs/systemd.md).\n"
        "[Unit]\n"
        "Description=mailslot POP3 server\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        f"{requires}"
        "\n[Service]\n"
        "Type=notify\n"
        "NotifyAccess=main\n"
        f"{sockets}"
        f"ExecStart={' '.join(map(_quote, program))} serve --config {_quote(str(config_path))}\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
        "# SIGTERM to the parent: it stops accepting, lets sessions end for\n"
        "# server.shutdown_timeout seconds, then closes the rest.\n"
        "KillMode=mixed\n"
        f"TimeoutStopSec={stop_after}\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "LimitNOFILE=65536\n"
        + _HARDENING.format(read_write=read_write)
        + "\n[Install]\nWantedBy=multi-user.target\n"
    )


def socket_unit(config: Config) -> str:
    """``mailslot.socket``: systemd binds the POP3 listeners and passes them on."""
    lines = []
    for listener in config.listeners:
        if listener.protocol != "pop3":
            continue
        address = f"[{listener.address}]" if ":" in listener.address else listener.address
        lines.append(f"ListenStream={address}:{listener.port}")
    streams = "\n".join(lines)
    return (
        "# mailslot.socket, written by `mailslot systemd-unit --socket` (docs/systemd.md).\n"
        "[Unit]\n"
        "Description=mailslot POP3 listening sockets\n"
        "\n[Socket]\n"
        f"{streams}\n"
        "BindIPv6Only=ipv6-only\n"
        "Backlog=1024\n"
        "\n[Install]\nWantedBy=sockets.target\n"
    )


def _quote(value: str) -> str:
    """A word for a unit file: quoted when it holds white space or quotes."""
    if value and not any(c.isspace() or c in "\"'\\" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
