"""Configuration: one TOML file into frozen dataclasses, validated once (docs/configuration.md).

Loading and validation live in :func:`load`; everything below it receives these frozen objects
(the protocol core receives only :class:`mailslot.protocol.connection.CoreConfig`).  Every
problem in a file is collected and reported at once, each with its dotted key and line, so an
administrator fixes a file in one pass instead of one error per restart.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from mailslot.store.dovecotformat import UidlFormat
from mailslot.tomllines import KeyLines

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
    # With proxy_protocol: the proxies' networks (CIDR); a connection from elsewhere is
    # closed unread.  Empty: any peer may send a header.
    proxy_trusted_networks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    """One ``[[tls.certificates]]``: a further chain and key, served to the names in its
    subjectAltName (SNI, RFC 6066 section 3)."""

    certificate: Path
    private_key: Path


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[tls]``: certificate chain and key files, reloaded on SIGHUP or when they change."""

    certificate: Path | None = None
    private_key: Path | None = None
    handshake_timeout: float = 10.0
    # Mozilla's Server Side TLS profile (mailslot.tls.context): TLS 1.2 and 1.3, or 1.3 only.
    profile: Literal["intermediate", "modern"] = "intermediate"
    # Seconds between looks at the files' stat() for an automatic reload; 0: none.
    reload_check_interval: float = 5.0
    certificates: tuple[CertificateConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class SqlAuthConfig:
    """``[auth.sql]``: Dovecot's SQL passdb (mailslot.auth.sql).  The DSN comes from dsn,
    dsn_file or $MAILSLOT_AUTH_DSN, so no password need sit in this file."""

    driver: Literal["postgresql", "mysql"] = "postgresql"
    dsn: str | None = None
    dsn_file: Path | None = None
    password_query: str | None = None  # Dovecot's syntax: '%u' is bound, never pasted
    default_pass_scheme: str = "CRYPT"  # noqa: S105 (a scheme's name)
    pool_size: int = 5  # connections per worker process
    connect_timeout: float = 5.0
    query_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class DovecotAuthConfig:
    """``[auth.dovecot]``: Dovecot's auth service as the user database (mailslot.auth.dovecot)."""

    socket: Path = Path("/run/dovecot/auth-client")
    service: str = "pop3"
    userdb_socket: Path | None = None  # Dovecot's auth-userdb: home and LMTP lookups


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: the user database and login policy."""

    # "postgresql": users in the database of [store] dsn (docs/postgresql.md).
    # "sql": the administrator's password_query, [auth.sql].
    # "dovecot": a running Dovecot's auth service checks passwords ([auth.dovecot]).
    backend: Literal["passwd-file", "postgresql", "sql", "dovecot"] = "passwd-file"
    passwd_file: Path | None = None
    allow_plaintext_without_tls: bool = False
    failure_delay: float = 2.0
    failure_delay_max: float = 15.0
    failure_free_attempts: int = 0
    ipv6_prefix: int = 64
    failure_addresses: int = 65536
    failure_time_floor: float = 0.0
    verify_pool: int = 0  # 0: the cores, divided among the workers
    verify_per_client: int = 2
    # Dovecot compatibility (mailslot.auth.usernameformat, schemes, passwdfile): the login
    # name's normal form, and the legacy password schemes verified (e.g. ["MD5-CRYPT"]).
    # passwd_file may hold {domain}: one file per domain, the login name user@domain.
    username_format: str = "%Lu"
    legacy_schemes: tuple[str, ...] = ()
    sql: SqlAuthConfig = field(default_factory=SqlAuthConfig)
    dovecot: DovecotAuthConfig = field(default_factory=DovecotAuthConfig)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: where maildrops live. ``{user} {localpart} {domain} {home}`` are expanded."""

    maildir: str = "/var/mail/{user}/Maildir"
    # Messages whose listing each worker keeps to reuse at the next login (0: none).
    snapshot_cache: int = 200_000
    # "postgresql": maildrops in a database shared by every node (docs/postgresql.md).  The
    # DSN comes from dsn, dsn_file or $MAILSLOT_DSN, so no password need sit in this file.
    backend: Literal["maildir", "postgresql"] = "maildir"
    dsn: str | None = None
    dsn_file: Path | None = None
    pool_size: int = 10  # connections per worker process
    lease_seconds: float = 30.0  # the maildrop lease's lifetime, renewed every third of it
    statement_cache_size: int = 100  # prepared statements per connection; 0 behind PgBouncer
    # Dovecot's pop3_uidl_format, read with dovecot-uidlist; None: base-name unique-ids.
    uidl_format: str | None = None
    # Dovecot's pop3_reuse_xuidl: a message's X-UIDL header is its unique-id.
    reuse_xuidl: bool = False
    # Flag messages retrieved with RETR as seen (Dovecot's pop3_no_flag_updates = no).
    flag_updates: bool = True
    # Dovecot's pop3_deleted_flag: DELE hides with this IMAP keyword instead of removing.
    deleted_flag: str | None = None
    # Dovecot's pop3_lock_session: false lets sessions of one maildrop run side by side.
    lock_session: bool = True
    # Dovecot's pop3_client_workarounds: "outlook-no-nuls", "oe-ns-eoh".
    client_workarounds: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: every bound the server enforces."""

    max_connections: int = 10000
    max_connections_per_ip: int = 50
    # The maildrop lock allows one (unless [store] lock_session = false); kept explicit.
    max_sessions_per_user: int = 1
    command_line_length: int = 255  # RFC 2449 section 4, including CRLF
    sasl_line_length: int = 8192
    max_bad_commands_before_login: int = 3
    max_bad_commands: int = 20
    login_timeout: float = 60.0
    idle_timeout: float = 600.0  # RFC 1939 section 3: at least 10 minutes
    # [store] backend = "postgresql": seconds between two publishings of a worker's counts
    # (the other nodes' view is at most twice this old; a dead node's expire after 3x).
    cluster_refresh: float = 2.0


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
    format: str = "text"  # or "json": mailslot.log (checked below, with a clearer message)
    logout_format: str = "top=%t/%p, retr=%r/%b, del=%d/%m, size=%s"  # Dovecot's; mailslot.logout


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``."""

    hostname: str = "localhost"
    workers: int = 1
    shutdown_timeout: float = 10.0
    # Who serves once the sockets are bound (mailslot.privileges); root only with a reason.
    user: str | None = None
    group: str | None = None  # default: the user's primary group
    run_as_root: str | None = None
    # Names this node's maildrop leases in a shared store; unique per running server.
    node_id: str | None = None  # default: the host name


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus exporter (docs/metrics.md); off without a ``port``."""

    address: str = "127.0.0.1"
    port: int | None = None


@dataclass(frozen=True, slots=True)
class AcmeConfig:
    """``[acme]``: certificates issued and renewed by mailslot (RFC 8555; docs/acme.md)."""

    enabled: bool = False
    directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    email: str | None = None
    domains: tuple[str, ...] = ()  # after [server] hostname
    challenge: Literal["http-01", "tls-alpn-01", "dns-01"] = "http-01"
    http_address: str = "*"  # every IPv4 and IPv6 address
    http_port: int = 80
    tls_alpn_address: str = "*"
    tls_alpn_port: int = 443
    key_type: Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072"] = "ecdsa-p256"
    state_directory: Path = Path("/var/lib/mailslot/acme")
    ca_bundle: Path | None = None  # trust for the ACME server's HTTPS (a test CA)
    # DNS-01 through RFC 2136 dynamic updates, signed with TSIG (RFC 8945).
    dns_server: str | None = None
    dns_port: int = 53
    dns_zone: str | None = None  # default: the name without its first label
    tsig_key_name: str | None = None
    tsig_secret_file: Path | None = None
    tsig_algorithm: str = "hmac-sha256"
    retry_initial: float = 60.0
    retry_max: float = 21600.0


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``[admin]``: the admin socket of ``mailslot who/kick/...`` (docs/cli.md)."""

    socket: Path | None = None  # default: /run/mailslot/admin.sock (mailslot.admin.sockets)
    group: str | None = None  # may use it too: mode 0660 and this group


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
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    acme: AcmeConfig = field(default_factory=AcmeConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    source: Path | None = None


# --------------------------------------------------------------------------------------------
# Loading and validation


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration: where it is and what would be allowed instead."""

    key: str  # dotted, e.g. "listener[1].tls"; "" for the file as a whole
    line: int | None
    message: str

    def format(self, source: Path | None = None) -> str:
        where = str(source) if source is not None else "<config>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is unusable; :attr:`problems` lists every reason, in file order."""

    def __init__(self, problems: list[ConfigProblem], source: Path | None = None) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
        self.source = source
        super().__init__("\n".join(p.format(source) for p in self.problems))


# Table name -> dataclass; ``listener`` is the array and handled on its own.
_TABLES: dict[str, type[Any]] = {
    "tls": TlsConfig,
    "auth": AuthConfig,
    "store": StoreConfig,
    "limits": LimitsConfig,
    "log": LogConfig,
    "delivery": DeliveryConfig,
    "server": ServerConfig,
    "metrics": MetricsConfig,
    "acme": AcmeConfig,
    "admin": AdminConfig,
}
_TOP_LEVEL = ("listener", *_TABLES)
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_MAILDIR_PLACEHOLDERS = ("user", "localpart", "domain", "home")
# An IMAP keyword (RFC 3501 section 9, flag-keyword = atom): no space, control or
# atom-special, and not a system flag (those start with a backslash).
_KEYWORD = re.compile(r"[!#$&\'+,\-./0-9:;<=>?@A-Z\[^_`a-z|~]+")
_WORKAROUNDS = ("outlook-no-nuls", "oe-ns-eoh")  # Dovecot's pop3_client_workarounds
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")
# RFC 1939 section 3: the autologout timer MUST be at least 10 minutes.
_MIN_IDLE_TIMEOUT = 600.0
# RFC 2449 section 4: a client may send command lines of up to 255 octets including CRLF.
_MIN_COMMAND_LINE = 255


def load(path: Path, *, check_files: bool = True) -> Config:
    """Read and validate the TOML file at ``path``; raise :class:`ConfigError` if unusable.

    ``check_files=False`` skips checking that referenced files exist (``mailslot user`` uses
    it: the passwd-file may be about to be created and certificates may not be in place yet).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            [ConfigProblem("", None, f"cannot read the file: {reason}")], path
        ) from exc
    return loads(text, path, check_files=check_files)


def loads(text: str, source: Path | None = None, *, check_files: bool = True) -> Config:
    """Validate TOML ``text``; relative paths are relative to ``source``'s directory (or cwd)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line = None
        if match := _TOML_POSITION.search(message):
            reason = message[: match.start()]
            if match[1] is not None:
                line = int(match[1])
                message = f"TOML syntax error at column {match[2]}: {reason}"
            else:
                line = max(1, len(text.splitlines()))
                message = f"TOML syntax error at the end of the file: {reason}"
        else:
            message = f"TOML syntax error: {message}"
        raise ConfigError([ConfigProblem("", line, message)], source) from exc
    return _Loader(text, source, check_files).load(raw)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(f'"{v}"' for v in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "an array of strings"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a file path (a string)",
    }.get(hint, str(hint))


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for kind, name in names.items():
        if type(value) is kind:
            return f"{name} ({value!r})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _suggest(key: str, allowed: typing.Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    return "allowed keys are " + ", ".join(allowed)


class _Loader:
    """One validation pass: collects every problem, then builds the frozen :class:`Config`."""

    def __init__(self, text: str, source: Path | None, check_files: bool) -> None:
        self.lines = KeyLines(text)
        self.source = source
        self.base = source.parent if source is not None else Path.cwd()
        self.check_files = check_files
        self.problems: list[ConfigProblem] = []

    def problem(
        self, table: str | None, key: str | None, message: str, index: int | None = None
    ) -> None:
        dotted = table or ""
        if index is not None:
            dotted += f"[{index}]"
        if key:
            dotted = f"{dotted}.{key}" if dotted else key
        self.problems.append(ConfigProblem(dotted, self.lines.find(table, key, index), message))

    # -- building ----------------------------------------------------------------------------

    def load(self, raw: dict[str, Any]) -> Config:
        for key, value in raw.items():
            if key in _TOP_LEVEL:
                continue
            home = [name for name, cls in _TABLES.items() if key in {f.name for f in fields(cls)}]
            if not isinstance(value, dict) and home:
                # A setting written above every table header, e.g. `hostname = ...`.
                self.problem(None, key, f"belongs in a table: move it under [{home[0]}]")
            else:
                self.problem(None, key, f'unknown table "{key}"; {_suggest(key, _TOP_LEVEL)}')
        tables: dict[str, Any] = {}
        for name, cls in _TABLES.items():
            value = raw.get(name, {})
            if not isinstance(value, dict):
                self.problem(None, name, f"must be a table ([{name}]), not {_toml_type(value)}")
                value = {}
            if name == "tls" and "certificates" in value:
                value = dict(value)
                entries = self.certificates(value.pop("certificates"))
                tables[name] = replace(self.build(cls, value, name), certificates=entries)
                continue
            if name == "auth" and ("sql" in value or "dovecot" in value):
                value = dict(value)
                nested: dict[str, Any] = {}
                if "sql" in value:
                    nested["sql"] = self.sql_auth(value.pop("sql"))
                if "dovecot" in value:
                    nested["dovecot"] = self.auth_dovecot(value.pop("dovecot"))
                tables[name] = replace(self.build(cls, value, name), **nested)
                continue
            tables[name] = self.build(cls, value, name)
        listeners = self.listeners(raw.get("listener", []))
        tables["store"] = self.store(tables["store"])
        config = Config(listeners=listeners, source=self.source, **tables)
        self.check(config)
        if self.problems:
            raise ConfigError(self.problems, self.source)
        return config

    def convert(self, hint: Any, value: object, table: str, key: str, index: int | None) -> Any:
        """Return ``value`` as ``hint`` wants it, or record a problem and return ``None``."""
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        ok: bool
        if typing.get_origin(hint) is Literal:
            ok = isinstance(value, str) and value in typing.get_args(hint)
        elif hint is bool:
            ok = isinstance(value, bool)
        elif hint is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif hint is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if ok:
                value = float(value)  # type: ignore[arg-type]
        elif typing.get_origin(hint) is tuple:
            ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
            if ok:
                return tuple(value)  # type: ignore[arg-type]
        elif hint is Path:
            ok = isinstance(value, str) and value != ""
            if ok:
                return self.path(str(value))
        else:
            ok = isinstance(value, str)
        if not ok:
            got = f'"{value}"' if isinstance(value, str) else _toml_type(value)
            self.problem(table, key, f"must be {_describe(hint)}, not {got}", index)
            return None
        return value

    def path(self, value: str) -> Path:
        return self.base / Path(value).expanduser()

    def values(
        self, cls: type[Any], raw: dict[str, Any], table: str, index: int | None = None
    ) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in names:
                where = f"[[{table}]]" if index is not None else f"[{table}]"
                self.problem(table, key, f"unknown key in {where}; {_suggest(key, names)}", index)
                continue
            converted = self.convert(hints[key], value, table, key, index)
            if converted is not None:
                values[key] = converted
        return values

    def build(self, cls: type[Any], raw: dict[str, Any], table: str) -> Any:
        return cls(**self.values(cls, raw, table))

    def listeners(self, raw: object) -> tuple[ListenerConfig, ...]:
        if isinstance(raw, dict):
            self.problem(
                None, "listener", "must be an array of tables: write [[listener]], not [listener]"
            )
            return ()
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            self.problem(
                None,
                "listener",
                f"must be an array of tables ([[listener]]), not {_toml_type(raw)}",
            )
            return ()
        return tuple(self.listener(item, index) for index, item in enumerate(raw))

    def certificates(self, raw: object) -> tuple[CertificateConfig, ...]:
        """``[[tls.certificates]]``: each entry needs both files."""
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            self.problem(
                "tls",
                "certificates",
                "must be an array of tables: write [[tls.certificates]] with certificate "
                f"and private_key, not {_toml_type(raw)}",
            )
            return ()
        entries: list[CertificateConfig] = []
        for index, item in enumerate(raw):
            values = self.values(CertificateConfig, item, "tls.certificates", index)
            missing = [key for key in ("certificate", "private_key") if key not in item]
            for key in missing:
                self.problem(
                    "tls.certificates",
                    None,
                    f"needs {key} (the {'chain' if key == 'certificate' else 'key'} file, PEM)",
                    index,
                )
            if "certificate" in values and "private_key" in values:
                entries.append(CertificateConfig(**values))
        return tuple(entries)

    def auth_dovecot(self, raw: object) -> DovecotAuthConfig:
        if not isinstance(raw, dict):
            got = _toml_type(raw)
            self.problem("auth", "dovecot", f"must be a table ([auth.dovecot]), not {got}")
            return DovecotAuthConfig()
        values = self.values(DovecotAuthConfig, raw, "auth.dovecot")
        if values.get("service") == "" or "\t" in values.get("service", ""):
            self.problem("auth.dovecot", "service", 'must be a service name such as "pop3"')
        return DovecotAuthConfig(**values)

    def listener(self, raw: dict[str, Any], index: int) -> ListenerConfig:
        values = self.values(ListenerConfig, raw, "listener", index)
        protocol = values.get("protocol", "pop3")
        if "path" in raw:
            if protocol != "lmtp":
                self.problem(
                    "listener",
                    "path",
                    'a Unix socket path is only allowed with protocol = "lmtp"',
                    index,
                )
            for key in ("address", "port"):
                if key in raw:
                    self.problem(
                        "listener",
                        key,
                        "give either address and port or path (a Unix socket), not both",
                        index,
                    )
        elif protocol == "lmtp" and "port" not in raw:
            self.problem(
                "listener",
                None,
                "an LMTP listener needs a port (e.g. 24) or a path (a Unix socket)",
                index,
            )
        # Defaults that follow from the other keys: LMTP is local and plain; POP3S is on 995.
        values.setdefault("tls", "none" if protocol == "lmtp" else "starttls")
        values.setdefault("port", 995 if values["tls"] == "implicit" else 110)
        if "address" in values and not _is_address(values["address"]):
            self.problem(
                "listener",
                "address",
                f'"{values["address"]}" is not an IPv4 or IPv6 address; use a literal such as '
                '"127.0.0.1", "0.0.0.0", "::1" or "::", or "localhost"',
                index,
            )
        if isinstance(values.get("port"), int) and not 1 <= values["port"] <= 65535:
            self.problem(
                "listener", "port", f"must be between 1 and 65535, not {values['port']}", index
            )
        networks = values.get("proxy_trusted_networks", ())
        if networks and not values.get("proxy_protocol", False):
            self.problem(
                "listener",
                "proxy_trusted_networks",
                "only means something with proxy_protocol = true",
                index,
            )
        for network in networks if isinstance(networks, tuple) else ():
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                self.problem(
                    "listener",
                    "proxy_trusted_networks",
                    f'"{network}" is not a network; write one as "192.0.2.0/24" or "2001:db8::/32"',
                    index,
                )
        return ListenerConfig(**values)

    def sql_auth(self, raw: object) -> SqlAuthConfig:
        """``[auth.sql]``; what the query may hold is :mod:`mailslot.auth.sqlcheck`'s."""
        if not isinstance(raw, dict):
            self.problem("auth", "sql", f"must be a table ([auth.sql]), not {_toml_type(raw)}")
            return SqlAuthConfig()
        from mailslot.auth.sqlcheck import check_sql_config

        sql = SqlAuthConfig(**self.values(SqlAuthConfig, raw, "auth.sql"))
        for key, message in check_sql_config(sql, check_files=self.check_files):
            self.problem("auth.sql", key, message)
        return sql

    def store(self, store: StoreConfig) -> StoreConfig:
        template = store.maildir
        bad = [name for name in _PLACEHOLDER.findall(template) if name not in _MAILDIR_PLACEHOLDERS]
        if bad:
            allowed = ", ".join("{%s}" % n for n in _MAILDIR_PLACEHOLDERS)  # noqa: UP031
            self.problem(
                "store",
                "maildir",
                f"unknown placeholder {{{bad[0]}}}; allowed are {allowed} and a leading ~/",
            )
        if template.startswith("~/"):
            template = "{home}/" + template[2:]
        if not bad and not any(f"{{{n}}}" in template for n in ("user", "localpart", "home")):
            self.problem(
                "store",
                "maildir",
                "must contain {user}, {localpart} or {home} (or start with ~/): "
                "otherwise every user would share one maildrop",
            )
        if not template.startswith(("/", "{home}")):
            template = os.path.join(self.base, template)
        if store.snapshot_cache < 0:
            self.problem(
                "store", "snapshot_cache", f"must be 0 (none) or more, not {store.snapshot_cache}"
            )
        if store.uidl_format is not None:
            try:
                UidlFormat(store.uidl_format)
            except ValueError as exc:
                self.problem("store", "uidl_format", f"{exc} (Dovecot's pop3_uidl_format syntax)")
        elif store.reuse_xuidl:
            self.problem("store", "reuse_xuidl", "needs uidl_format (it reads dovecot-uidlist)")
        if store.deleted_flag is not None:
            if store.uidl_format is None:
                self.problem(
                    "store", "deleted_flag", "needs uidl_format (keywords live in dovecot-keywords)"
                )
            elif not _KEYWORD.fullmatch(store.deleted_flag):
                self.problem(
                    "store",
                    "deleted_flag",
                    f'"{store.deleted_flag}" is not an IMAP keyword (RFC 3501 atom, no \\)',
                )
        self.store_database(store)
        self.store_dovecot_options(store)
        return replace(store, maildir=template)

    def store_dovecot_options(self, store: StoreConfig) -> None:
        if not store.lock_session and store.backend != "maildir":
            self.problem(
                "store", "lock_session", 'false needs backend = "maildir" (a lease is exclusive)'
            )
        for name in store.client_workarounds:
            if name not in _WORKAROUNDS:
                allowed = ", ".join(f'"{w}"' for w in _WORKAROUNDS)
                self.problem("store", "client_workarounds", f'unknown "{name}"; known: {allowed}')

    def store_database(self, store: StoreConfig) -> None:
        if store.dsn is not None and store.dsn_file is not None:
            self.problem("store", "dsn_file", "give dsn or dsn_file, not both")
        if store.backend == "postgresql" and store.dsn_file is not None and self.check_files:
            self.required_file(
                "store", "dsn_file", store.dsn_file, "it is set", "the PostgreSQL DSN"
            )
        if store.pool_size < 1:
            self.problem("store", "pool_size", f"must be 1 or more, not {store.pool_size}")
        if store.statement_cache_size < 0:
            self.problem(
                "store",
                "statement_cache_size",
                f"must be 0 (none, behind PgBouncer) or more, not {store.statement_cache_size}",
            )
        if store.lease_seconds < 1.0:
            self.problem(
                "store",
                "lease_seconds",
                f"must be at least 1 (it is renewed every third of it), not {store.lease_seconds}",
            )

    # -- cross-checks ------------------------------------------------------------------------

    def check(self, config: Config) -> None:
        if not config.listeners and not any(p.key.startswith("listener") for p in self.problems):
            self.problem(
                None,
                None,
                "no [[listener]]: add at least one, for example "
                '[[listener]] with address = "0.0.0.0", port = 995, tls = "implicit"',
            )
        self.check_duplicates(config.listeners)
        self.check_metrics(config)
        self.check_admin(config)
        tls_users = [i for i, lst in enumerate(config.listeners) if lst.tls != "none"]
        if tls_users and config.acme.enabled:
            self.check_acme_paths(config.tls)  # files ACME writes: need not exist yet
        elif tls_users:
            first = config.listeners[tls_users[0]]
            why = f'listener[{tls_users[0]}] has tls = "{first.tls}"'
            self.required_file(
                "tls", "certificate", config.tls.certificate, why, "the certificate chain (PEM)"
            )
            self.required_file(
                "tls", "private_key", config.tls.private_key, why, "the private key (PEM)"
            )
        self.check_acme(config)
        if config.tls.certificates and (
            config.tls.certificate is None or config.tls.private_key is None
        ):
            self.problem(
                "tls",
                "certificates",
                "needs [tls] certificate and private_key as well: the certificate for "
                "clients that send no name or one no entry serves",
            )
        for index, entry in enumerate(config.tls.certificates):
            for key, what in (("certificate", "the certificate chain"), ("private_key", "the key")):
                self.required_file(
                    "tls.certificates",
                    key,
                    getattr(entry, key),
                    "",
                    f"{what} (PEM)",
                    index,
                )
        if config.auth.backend == "sql" and config.auth.sql.password_query is None:
            self.problem(
                "auth.sql",
                "password_query",
                'is required with [auth] backend = "sql": the SELECT that returns the'
                " password (Dovecot's password_query)",
            )
        self.check_passwd_settings(config.auth)
        if (
            config.listeners
            and config.auth.backend == "passwd-file"
            and not _is_template(config.auth.passwd_file)
        ):
            self.required_file(
                "auth",
                "passwd_file",
                config.auth.passwd_file,
                "users must be able to log in",
                "the user database",
            )
        self.check_numbers(config)
        if not config.store.lock_session and config.limits.max_sessions_per_user < 2:
            self.problem(
                "store",
                "lock_session",
                "false lets sessions of one maildrop run side by side: also raise "
                "[limits] max_sessions_per_user above 1 (it is "
                f"{config.limits.max_sessions_per_user})",
            )
        if config.log.level not in _LOG_LEVELS:
            self.problem(
                "log", "level", f'must be one of {", ".join(_LOG_LEVELS)}, not "{config.log.level}"'
            )
        if config.log.format not in ("text", "json"):
            self.problem("log", "format", f'must be "text" or "json", not "{config.log.format}"')
        from mailslot.logout import check as check_logout_format

        logout_problem = check_logout_format(config.log.logout_format)
        if logout_problem is not None:
            self.problem("log", "logout_format", logout_problem)
        if not config.server.hostname:
            self.problem(
                "server", "hostname", "must not be empty: it names this server in greetings"
            )

    def check_acme_paths(self, tls: TlsConfig) -> None:
        for key in ("certificate", "private_key"):
            if getattr(tls, key) is None:
                self.problem(
                    "tls", key, "is required with [acme] enabled: name the file ACME writes to"
                )

    def check_acme(self, config: Config) -> None:
        from mailslot.tls.acme.settings import problems  # the logic is ACME's

        for key, message in problems(config, check_files=self.check_files):
            self.problem("acme", key, message)

    def check_admin(self, config: Config) -> None:
        self.check_admin_group(config)
        path = config.admin.socket
        if path is None:
            return
        if path.is_dir():
            self.problem("admin", "socket", f"must name a socket file, not the directory {path}")

    def check_admin_group(self, config: Config) -> None:
        group = config.admin.group
        if group is None:
            return
        import grp

        try:
            grp.getgrnam(group)
        except KeyError:
            self.problem("admin", "group", f'there is no group "{group}" on this system')

    def check_metrics(self, config: Config) -> None:
        metrics = config.metrics
        if not _is_address(metrics.address):
            self.problem(
                "metrics",
                "address",
                f'"{metrics.address}" is not an IPv4 or IPv6 address; use a literal such as '
                '"127.0.0.1" or "::1"',
            )
        if metrics.port is None:
            return
        if not 1 <= metrics.port <= 65535:
            self.problem("metrics", "port", f"must be between 1 and 65535, not {metrics.port}")
            return
        where = (_normalise_address(metrics.address), metrics.port)
        for index, lst in enumerate(config.listeners):
            if lst.path is None and (_normalise_address(lst.address), lst.port) == where:
                self.problem(
                    "metrics",
                    "port",
                    f"{metrics.address} port {metrics.port} is already used by listener[{index}]",
                )

    def check_duplicates(self, listeners: tuple[ListenerConfig, ...]) -> None:
        seen: dict[object, int] = {}
        for index, lst in enumerate(listeners):
            if lst.path is not None:
                where: object = lst.path
                shown = str(lst.path)
                key = "path"
            else:
                where = (_normalise_address(lst.address), lst.port)
                shown = f"{lst.address} port {lst.port}"
                key = "port"
            if where in seen:
                self.problem(
                    "listener", key, f"{shown} is already used by listener[{seen[where]}]", index
                )
            else:
                seen[where] = index

    def required_file(
        self,
        table: str,
        key: str,
        path: Path | None,
        why: str,
        what: str,
        index: int | None = None,
    ) -> None:
        if path is None:
            self.problem(table, key, f"is required because {why}: name the file holding {what}")
        elif self.check_files:
            if not path.is_file():
                self.problem(
                    table,
                    key,
                    f"{path} does not exist or is not a file; it should hold {what}",
                    index,
                )
            elif not os.access(path, os.R_OK):
                self.problem(
                    table, key, f"{path} is not readable by this user (uid {os.getuid()})", index
                )

    def check_numbers(self, config: Config) -> None:
        limits = config.limits
        for f in fields(LimitsConfig):
            value = getattr(limits, f.name)
            if isinstance(value, int) and value < 1:
                self.problem("limits", f.name, f"must be a positive integer, not {value}")
        if limits.command_line_length >= 1 and limits.command_line_length < _MIN_COMMAND_LINE:
            self.problem(
                "limits",
                "command_line_length",
                f"must be at least {_MIN_COMMAND_LINE} (RFC 2449 section 4 lets clients "
                f"send lines that long), not {limits.command_line_length}",
            )
        if not 0.1 <= limits.cluster_refresh <= 60:
            self.problem(
                "limits",
                "cluster_refresh",
                f"must be 0.1 to 60 seconds, not {limits.cluster_refresh:g}",
            )
        if limits.login_timeout <= 0:
            self.problem(
                "limits",
                "login_timeout",
                f"must be more than 0 seconds, not {limits.login_timeout:g}",
            )
        if limits.idle_timeout < _MIN_IDLE_TIMEOUT:
            self.problem(
                "limits",
                "idle_timeout",
                f"must be at least {_MIN_IDLE_TIMEOUT:g} seconds (RFC 1939 section 3: the "
                f"autologout timer is at least 10 minutes), not {limits.idle_timeout:g}",
            )
        if config.tls.reload_check_interval < 0:
            self.problem(
                "tls",
                "reload_check_interval",
                f"must be 0 (no automatic reload) or more seconds, not "
                f"{config.tls.reload_check_interval:g}",
            )
        if config.tls.handshake_timeout <= 0:
            self.problem(
                "tls",
                "handshake_timeout",
                f"must be more than 0 seconds, not {config.tls.handshake_timeout:g}",
            )
        if config.auth.failure_delay < 0:
            self.problem(
                "auth",
                "failure_delay",
                f"must be 0 or more seconds, not {config.auth.failure_delay:g}",
            )
        if config.auth.failure_delay_max < config.auth.failure_delay:
            self.problem(
                "auth",
                "failure_delay_max",
                f"must be at least failure_delay ({config.auth.failure_delay:g}), "
                f"not {config.auth.failure_delay_max:g}",
            )
        self._check_auth_bounds(config.auth)
        delivery = config.delivery
        if delivery.max_message_size < 1:
            self.problem(
                "delivery",
                "max_message_size",
                f"must be a positive number of bytes, not {delivery.max_message_size}",
            )
        for key in ("quota_bytes", "quota_messages"):
            if getattr(delivery, key) < 0:
                self.problem(
                    "delivery", key, f"must be 0 (no quota) or more, not {getattr(delivery, key)}"
                )
        self.check_identity(config.server)
        if config.server.workers < 1:
            self.problem("server", "workers", f"must be at least 1, not {config.server.workers}")
        if config.server.shutdown_timeout < 0:
            self.problem(
                "server",
                "shutdown_timeout",
                f"must be 0 or more seconds, not {config.server.shutdown_timeout:g}",
            )

    def check_identity(self, server: ServerConfig) -> None:
        """What can be said without the user database; :mod:`mailslot.privileges` checks the
        names exist, and whether root needs them, when the server starts."""
        for key in ("user", "group"):
            if getattr(server, key) == "":
                self.problem("server", key, "must not be empty: name an account")
        if server.run_as_root is not None and not server.run_as_root.strip():
            self.problem(
                "server",
                "run_as_root",
                "must say why the server runs as root (a sentence for the next administrator)",
            )
        if server.group is not None and server.user is None:
            self.problem("server", "group", "needs [server] user as well")
        if server.user is not None and server.run_as_root is not None:
            self.problem(
                "server",
                "run_as_root",
                "give either user (serve as that account) or run_as_root, not both",
            )

    def check_passwd_settings(self, auth: AuthConfig) -> None:
        """``username_format``, ``legacy_schemes`` and a ``{domain}`` passwd_file."""
        from mailslot.auth import schemes, usernameformat

        wrong = usernameformat.validate_format(auth.username_format)
        if wrong is not None:
            self.problem("auth", "username_format", f'"{auth.username_format}" {wrong}')
        for name in auth.legacy_schemes:
            if schemes.canonical_legacy(name) is None:
                allowed = ", ".join(sorted(schemes.LEGACY_SCHEMES))
                self.problem(
                    "auth",
                    "legacy_schemes",
                    f'"{name}" is not a legacy scheme mailslot can verify on request; one of '
                    f"{allowed} (other schemes are verified without being listed)",
                )
        path = auth.passwd_file
        if path is None or not _is_template(path):
            return
        others = {m for m in _PLACEHOLDER.findall(str(path)) if m != "domain"}
        if others:
            self.problem(
                "auth",
                "passwd_file",
                "may hold only the {domain} placeholder, not "
                + ", ".join(f"{{{m}}}" for m in sorted(others)),
            )
        elif str(path).split("{domain}")[0].count("/") == 0:
            self.problem("auth", "passwd_file", "must be an absolute path before {domain}")
        elif self.check_files:
            head = str(path).split("{domain}")[0]
            parent = Path(head) if head.endswith("/") else Path(head).parent
            if not parent.is_dir():
                self.problem(
                    "auth",
                    "passwd_file",
                    f"{parent} does not exist or is not a directory; it should hold the"
                    " per-domain files",
                )

    def _check_auth_bounds(self, auth: AuthConfig) -> None:
        bounds: tuple[tuple[str, float, float], ...] = (
            ("failure_free_attempts", 0, 1000),
            ("ipv6_prefix", 0, 128),
            ("failure_addresses", 64, 1 << 24),
            ("failure_time_floor", 0, 10),
            ("verify_pool", 0, 1024),
            ("verify_per_client", 1, 1024),
        )
        for key, low, high in bounds:
            value = getattr(auth, key)
            if not low <= value <= high:
                self.problem("auth", key, f"must be from {low:g} to {high:g}, not {value:g}")


def _is_template(path: Path | None) -> bool:
    """Whether ``[auth] passwd_file`` names one file per domain (``{domain}``)."""
    return path is not None and "{" in str(path)


def _is_address(value: str) -> bool:
    if value == "localhost":
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _normalise_address(value: str) -> str:
    # "::0" and "::" are the same socket; "localhost" is compared as written.
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value
