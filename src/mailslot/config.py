"""Configuration: one TOML file into frozen dataclasses, validated once (docs/configuration.md).

Loading and validation live in :func:`load`; everything below it receives these frozen objects
(the protocol core receives only :class:`mailslot.protocol.connection.CoreConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TlsMode = Literal["implicit", "starttls", "none"]
ListenerProtocol = Literal["pop3", "lmtp"]


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One ``[[listener]]``: a POP3 (or LMTP, issue 3) socket."""

    protocol: ListenerProtocol = "pop3"
    address: str = "127.0.0.1"
    port: int = 110
    tls: TlsMode = "starttls"
    path: Path | None = None  # a Unix socket instead of address/port (LMTP)
    proxy_protocol: bool = False


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[tls]``: certificate chain and key files, reloaded on SIGHUP."""

    certificate: Path | None = None
    private_key: Path | None = None
    handshake_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: the user database and login policy."""

    passwd_file: Path | None = None
    allow_plaintext_without_tls: bool = False
    failure_delay: float = 2.0
    failure_delay_max: float = 15.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: where maildrops live. ``{user} {localpart} {domain} {home}`` are expanded."""

    maildir: str = "/var/mail/{user}/Maildir"


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: every bound the server enforces."""

    max_connections: int = 10000
    max_connections_per_ip: int = 50
    max_sessions_per_user: int = 1  # the maildrop lock allows one; kept explicit for clarity
    command_line_length: int = 255  # RFC 2449 section 4, including CRLF
    sasl_line_length: int = 8192
    max_bad_commands_before_login: int = 3
    max_bad_commands: int = 20
    login_timeout: float = 60.0
    idle_timeout: float = 600.0  # RFC 1939 section 3: at least 10 minutes


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """``[delivery]``: LMTP and ``mailslot deliver`` (RFC 2033), issue 3.

    ``recipient`` maps an envelope address to a user: ``"localpart"`` (the part before ``@``,
    only for ``domains``, all domains when empty) or ``"address"`` (the full address is the user
    name).
    """

    recipient: Literal["localpart", "address"] = "localpart"
    domains: tuple[str, ...] = ()
    max_message_size: int = 50 * 1024 * 1024
    quota_bytes: int = 0  # 0 = no quota
    quota_messages: int = 0
    add_delivered_to: bool = True
    add_return_path: bool = True


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``."""

    level: str = "info"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``."""

    hostname: str = "localhost"
    workers: int = 1
    shutdown_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    listeners: tuple[ListenerConfig, ...] = ()
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    source: Path | None = None
