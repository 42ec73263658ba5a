"""A parsed Dovecot 2.3 configuration into mailslot settings, and what could not come along.

Every setting the tree holds is either carried over (consumed) or listed in
:attr:`Imported.skipped` with the reason; :attr:`Imported.notes` explains mappings that are
close but not identical.  Settings ``doveconf -n`` leaves out are at Dovecot's defaults,
:data:`mailslot.dovecotconf.defaults.DEFAULTS`.

The mappings follow docs/configuration.md (mailslot) and Dovecot's doc/example-config:
``service pop3-login { inet_listener pop3 / pop3s }`` into ``[[listener]]`` (RFC 2595 STLS,
RFC 8314 implicit TLS), ``ssl*`` into ``[tls]``, the first ``passdb`` into ``[auth]``,
``mail_location`` into ``[store] maildir``, and the ``pop3_*`` settings into ``[store]`` and
``[log]``.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mailslot.dovecotconf.defaults import (
    DEFAULTS,
    LEGACY_SCHEMES,
    LOGOUT_FORMAT,
    NOT_INET,
    REASONS,
    SECTION_REASONS,
    SERVICE_REASONS,
    SERVICE_SETTING,
    TEXT_SCHEMES,
    WORKAROUNDS,
)
from mailslot.dovecotconf.parser import DovecotConfigError, Section, Setting, parse_file
from mailslot.store.dovecotformat import UidlFormat


@dataclass(frozen=True, slots=True)
class Skipped:
    """A setting or section not carried over; ``key`` as Dovecot names it."""

    key: str
    where: str
    reason: str

    def format(self) -> str:
        where = f" ({self.where})" if self.where else ""
        return f"{self.key}{where}: {self.reason}"


@dataclass(slots=True)
class Imported:
    """mailslot tables (``"auth.sql"`` style names) and what the import left behind."""

    listeners: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    certificates: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    secret: bool = False  # a password was carried over: write the output 0600

    def set(self, table: str, key: str, value: Any) -> None:
        self.tables.setdefault(table, {})[key] = value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
_UNITS = {
    "": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "ms": 0.001, "msec": 0.001, "msecs": 0.001, "millisecs": 0.001,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip


def seconds(value: str) -> float | None:
    """A Dovecot time interval (``2 secs``, ``500 ms``, ``1 min``) in seconds."""
    match = _DURATION.match(value.lower())
    if match is None or match[2] not in _UNITS:
        return None
    return float(match[1]) * _UNITS[match[2]]


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "y", "1", "true")


# %u, %n, %d, %h and their long forms; modifiers (L, U) are kept for username_format only.
_VARIABLES = {
    "u": "{user}", "user": "{user}",
    "n": "{localpart}", "username": "{localpart}",
    "d": "{domain}", "domain": "{domain}",
    "h": "{home}", "home": "{home}",
}  # fmt: skip
_PERCENT = re.compile(r"%([LU]?)(?:\{([a-z]+)\}|([A-Za-z%]))")


def template(value: str, *, lowered: bool = False) -> tuple[str, list[str]]:
    """A Dovecot path with ``%u %n %d %h`` as a mailslot ``{user}`` template; the second
    item lists the variables that have no equivalent (empty when it translated whole).

    ``lowered``: user names are lower-cased at login (``auth_username_format = %Lu``), so
    ``%Lu`` is ``%u``.
    """
    unknown: list[str] = []

    def one(match: re.Match[str]) -> str:
        case, name = match[1], match[2] or match[3]
        if name == "%" and not case:
            unknown.append("%%")
            return "%"
        if name in _VARIABLES and (not case or (case == "L" and lowered and name != "h")):
            return _VARIABLES[name]
        unknown.append(match[0])
        return match[0]

    return _PERCENT.sub(one, value), unknown


class Mapper:
    """One import: walks the tree once, consuming what it carries over."""

    def __init__(self, root: Section, *, base: Path | None = None) -> None:
        self.root = root
        self.base = base  # where relative args of the files are resolved
        self.out = Imported()
        self.pop3 = next(root.find("protocol", "pop3"), Section("protocol", "pop3"))
        self.consumed: set[int] = set()  # id() of consumed Settings and Sections
        self.static_home: str | None = None  # a static userdb's home=, as a template

    # -- access --------------------------------------------------------------------------

    def setting(self, key: str) -> Setting | None:
        """The effective setting for POP3: ``protocol pop3 { }`` over the top level."""
        top = self.root.settings.get(key)
        found = self.pop3.settings.get(key) or top
        for setting in (found, top):  # a top-level value POP3 overrides is handled too
            if setting is not None:
                self.consumed.add(id(setting))
        return found

    def value(self, key: str) -> str:
        found = self.setting(key)
        return DEFAULTS.get(key, "") if found is None else found.value

    def where(self, key: str) -> str:
        found = self.pop3.settings.get(key) or self.root.settings.get(key)
        return "" if found is None else found.where

    def lowered(self) -> bool:
        """Whether user names are lower-cased at login (Dovecot's default ``%Lu``)."""
        return self.value("auth_username_format").startswith("%L")

    def skip(self, key: str, reason: str, where: str = "") -> None:
        self.out.skipped.append(Skipped(key, where, reason))

    # -- the whole -----------------------------------------------------------------------

    def run(self) -> Imported:
        version = self.root.settings.get("dovecot_config_version")
        if version is not None:
            raise DovecotConfigError(
                f"{version.where}: dovecot_config_version = {version.value}: a Dovecot 2.4 "
                "configuration; import-dovecot reads Dovecot 2.3's"
            )
        self.consumed.add(id(self.pop3))
        self.server()
        self.listeners()
        self.tls()
        self.auth()
        self.store()
        self.log()
        self.leftovers()
        return self.out

    def leftovers(self) -> None:
        for key, setting in [*self.root.settings.items(), *self.pop3.settings.items()]:
            if id(setting) not in self.consumed:
                reason = REASONS.get(key, "no mailslot equivalent")
                self.skip(key, reason, setting.where)
        for section in [*self.root.sections, *self.pop3.sections]:
            if id(section) in self.consumed or not _has_settings(section):
                continue  # an empty block (conf.d's commented-out examples) changes nothing
            reason = SECTION_REASONS.get(section.kind, "no mailslot equivalent")
            if section.kind == "protocol":
                reason = f"applies to {section.name}, which mailslot does not serve"
            elif section.kind == "service":
                reason = SERVICE_REASONS.get(section.name, reason)
            self.skip(f"{section.title} {{ }}", reason, section.where)

    # -- [server] --------------------------------------------------------------------------

    def server(self) -> None:
        hostname = self.value("hostname")
        if hostname:
            self.out.set("server", "hostname", hostname)
        for key, target in (("mail_uid", "user"), ("mail_gid", "group")):
            found = self.setting(key)
            if found is None or not found.value:
                continue
            name = _account(found.value, group=target == "group")
            if name is None:
                self.skip(key, f"no account {found.value!r} on this host", found.where)
            else:
                self.out.set("server", target, name)

    # -- [[listener]] ----------------------------------------------------------------------

    def listeners(self) -> None:
        protocols = self.value("protocols").replace('"', "").split()
        if "pop3" not in protocols:
            self.out.notes.append(
                f"protocols = {' '.join(protocols) or '(none)'} does not serve POP3; the "
                "listeners are those service pop3-login would have"
            )
        ssl = self.value("ssl").lower()
        addresses = self.addresses(self.value("listen"), self.where("listen"))
        proxies = self.value("haproxy_trusted_networks").split()
        specs: dict[str, dict[str, str]] = {
            "pop3": {"port": "110"},
            "pop3s": {"port": "995", "ssl": "yes"},
        }
        wheres: dict[str, str] = {}
        for service in self.root.find("service", "pop3-login"):
            self.consumed.add(id(service))
            for key, setting in service.settings.items():
                self.skip(f"service pop3-login {{ {key} }}", SERVICE_SETTING, setting.where)
            for inner in service.sections:
                if inner.kind != "inet_listener":
                    self.skip(f"service pop3-login {{ {inner.title} }}", NOT_INET, inner.where)
                    continue
                spec = specs.setdefault(inner.name, {})
                wheres[inner.name] = inner.where
                for key, setting in inner.settings.items():
                    if key in ("port", "ssl", "address", "haproxy"):
                        spec[key] = setting.value
                    else:
                        self.skip(
                            f"inet_listener {inner.name} {{ {key} }}",
                            "no mailslot equivalent",
                            setting.where,
                        )
        for name, spec in specs.items():
            port_text = spec.get("port", "0") or "0"
            if not port_text.isdigit() or int(port_text) > 65535:
                self.skip(f"inet_listener {name} {{ port = {port_text} }}", "not a port number")
                continue
            port = int(port_text)
            if port == 0:
                continue  # Dovecot's way of turning a listener off
            implicit = _yes(spec.get("ssl", "no"))
            if implicit and ssl == "no":
                self.skip(
                    f"inet_listener {name}", "ssl = yes on it but ssl = no", wheres.get(name, "")
                )
                continue
            tls = "implicit" if implicit else ("none" if ssl == "no" else "starttls")
            here = addresses
            if "address" in spec:
                here = self.addresses(spec["address"], wheres.get(name, ""))
            for address in here:
                listener: dict[str, Any] = {"address": address, "port": port, "tls": tls}
                if _yes(spec.get("haproxy", "no")):
                    listener["proxy_protocol"] = True
                    if proxies:
                        listener["proxy_trusted_networks"] = proxies
                self.out.listeners.append(listener)
        if ssl == "no":
            self.out.notes.append("ssl = no: the listeners offer no TLS (no STLS, no POP3S)")

    def addresses(self, value: str, where: str) -> list[str]:
        result: list[str] = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            if item == "*":
                result.append("0.0.0.0")
            elif item in ("::", "[::]"):
                result.append("::")
            elif re.fullmatch(r"[0-9.]+|\[?[0-9a-fA-F:]+\]?|localhost", item):
                result.append(item.strip("[]"))
            else:
                self.skip(f"listen = {item}", "mailslot listens on addresses, not names", where)
        return result

    # -- [tls] -----------------------------------------------------------------------------

    def tls(self) -> None:
        for key, target in (("ssl_cert", "certificate"), ("ssl_key", "private_key")):
            found = self.setting(key)
            if found is None or not found.value:
                continue
            path = found.file()
            if path is None:
                self.skip(key, "not a <file value: put the PEM in a file", found.where)
            else:
                self.out.set("tls", target, str(path))
        minimum = self.value("ssl_min_protocol")
        if minimum.upper() == "TLSV1.3":
            self.out.set("tls", "profile", "modern")
        elif minimum.upper() != "TLSV1.2":
            self.skip(
                f"ssl_min_protocol = {minimum}",
                'mailslot never offers less than TLS 1.2 ([tls] profile = "intermediate")',
                self.where("ssl_min_protocol"),
            )
        for local in [
            *self.root.find("local_name"),
            *self.root.find("local"),
            *self.root.find("remote"),
        ]:
            self.consumed.add(id(local))
            if local.kind == "local_name" and set(local.settings) == {"ssl_cert", "ssl_key"}:
                chain = local.settings["ssl_cert"].file()
                private = local.settings["ssl_key"].file()
                if chain is not None and private is not None:
                    self.out.certificates.append(
                        {"certificate": str(chain), "private_key": str(private)}
                    )
                    self.out.notes.append(
                        f"local_name {local.name}: its certificate is a [[tls.certificates]] "
                        "entry, served by the names in its subjectAltName"
                    )
                    continue
            self.skip(
                f"{local.title} {{ }}",
                "mailslot has no per-address or per-client settings"
                + (
                    "; only a local_name block with just ssl_cert and ssl_key is carried over"
                    if local.kind == "local_name"
                    else ""
                ),
                local.where,
            )

    # -- [auth] ----------------------------------------------------------------------------

    def auth(self) -> None:
        ssl = self.value("ssl").lower()
        plaintext_ok = not _yes(self.value("disable_plaintext_auth")) and ssl != "required"
        self.out.set("auth", "allow_plaintext_without_tls", plaintext_ok)
        if ssl == "required" and not _yes(self.value("disable_plaintext_auth")):
            self.out.notes.append("ssl = required: passwords only over TLS, as Dovecot")
        self.out.set("auth", "username_format", self.value("auth_username_format"))
        delay = seconds(self.value("auth_failure_delay"))
        if delay is None:
            self.skip("auth_failure_delay", "not a time interval", self.where("auth_failure_delay"))
        else:
            self.out.set("auth", "failure_delay", delay)
            if delay > 15.0:
                self.out.set("auth", "failure_delay_max", delay)
        mechanisms = self.value("auth_mechanisms").lower().split()
        other = [m for m in mechanisms if m != "plain"]
        if other:
            self.skip(
                f"auth_mechanisms = {' '.join(other)}",
                "mailslot offers USER/PASS and SASL PLAIN (RFC 5034) only",
                self.where("auth_mechanisms"),
            )
        passdbs = [db for db in self.root.find("passdb")]
        userdbs = [db for db in self.root.find("userdb")]
        for db in (*passdbs, *userdbs):
            self.consumed.add(id(db))
        usable = [
            db
            for db in passdbs
            if not _yes(db.get("deny") or "no") and not _yes(db.get("master") or "no")
        ]
        for db in passdbs:
            if db not in usable:
                kind = "deny" if _yes(db.get("deny") or "no") else "master"
                self.skip(f"passdb {{ {kind} = yes }}", f"mailslot has no {kind} passdb", db.where)
        first = usable[0] if usable else None
        if first is None:
            self.skip("passdb", "no passdb to carry over; [auth] passwd_file is left to you")
        else:
            for db in usable[1:]:
                self.skip(
                    f"passdb {{ driver = {db.get('driver')} }}",
                    "mailslot asks one user database; only the first passdb is carried over",
                    db.where,
                )
            self.passdb(first)
        self.userdbs(first, userdbs)

    def passdb(self, db: Section) -> None:
        driver = (db.get("driver") or "").lower()
        for key, setting in db.settings.items():
            if key not in ("driver", "args"):
                self.skip(f"passdb {{ {key} }}", "no mailslot equivalent", setting.where)
        if driver == "passwd-file":
            self.passwd_file(db)
        elif driver == "sql":
            self.sql(db)
        else:
            socket = os.path.join(
                self.value("base_dir").replace("/var/run/", "/run/"), "auth-client"
            )
            self.out.set("auth", "backend", "dovecot")
            self.out.set("auth.dovecot", "socket", socket)
            self.out.set("auth.dovecot", "service", "pop3")
            self.out.notes.append(
                f"passdb driver = {driver}: mailslot asks Dovecot's auth service through "
                f"{socket}; keep Dovecot's auth service running and let mailslot's user connect"
            )

    def passwd_file(self, db: Section) -> None:
        options, path = _args(db.get("args") or "")
        if path is None:
            self.skip("passdb { args }", "no passwd-file path in args", db.where)
            return
        converted, unknown = template(path, lowered=self.lowered())
        if unknown or "{user}" in converted or "{localpart}" in converted or "{home}" in converted:
            self.skip(
                f"passdb {{ args = {path} }}",
                "mailslot's passwd_file may use %d ({domain}) only",
                db.where,
            )
            return
        self.out.set("auth", "backend", "passwd-file")
        self.out.set("auth", "passwd_file", converted)
        self.scheme(options.pop("scheme", None), db.where, converted)
        lookup = options.pop("username_format", "%u")
        if lookup not in ("%u", "%Lu"):
            self.skip(
                f"passdb {{ args username_format={lookup} }}",
                "mailslot looks the login name up in the file as [auth] username_format "
                "leaves it; list the names that way in the file",
                db.where,
            )
        for key in options:
            self.skip(f"passdb {{ args {key}= }}", "no mailslot equivalent", db.where)

    def scheme(self, scheme: str | None, where: str, path: str) -> None:
        """Dovecot's ``scheme=`` is for passwords without a ``{SCHEME}`` prefix only."""
        if scheme is None or _all_prefixed(path):
            return
        upper = scheme.upper()
        if upper in LEGACY_SCHEMES:
            self.out.set("auth", "legacy_schemes", ["MD5-CRYPT"])
            self.out.notes.append(
                "scheme=MD5-CRYPT: [auth] legacy_schemes allows it, with a warning per login"
            )
        elif upper not in TEXT_SCHEMES:
            self.skip(
                f"passdb {{ args scheme={scheme} }}",
                "mailslot reads a password without {SCHEME} prefix as CRYPT: give each such "
                f"line the prefix {{{upper}}}",
                where,
            )

    def sql(self, db: Section) -> None:
        _, path = _args(db.get("args") or "")
        if path is None:
            self.skip("passdb { args }", "no SQL configuration file in args", db.where)
            return
        file = Path(path)
        if not file.is_absolute() and self.base is not None:
            file = self.base / file
        try:
            conf = parse_file(file)
        except DovecotConfigError as exc:
            self.skip(f"passdb {{ args = {path} }}", f"cannot read it: {exc}", db.where)
            return
        driver = (conf.get("driver") or "").lower()
        drivers = {"pgsql": "postgresql", "mysql": "mysql"}
        if driver not in drivers:
            self.skip(
                f"{path}: driver = {driver}",
                "mailslot speaks PostgreSQL and MySQL/MariaDB",
                db.where,
            )
            return
        self.out.set("auth", "backend", "sql")
        self.out.set("auth.sql", "driver", drivers[driver])
        connect = conf.get("connect") or ""
        dsn, extra = _dsn(drivers[driver], connect)
        self.out.set("auth.sql", "dsn", dsn)
        if "password" in _connect_fields(connect):
            self.out.secret = True
        for key in extra:
            self.skip(f"{path}: connect {key}=", "not carried into the DSN", db.where)
        query = conf.get("password_query")
        if query:
            self.out.set("auth.sql", "password_query", query)
        else:
            self.skip(
                f"{path}: password_query",
                "missing: Dovecot's default query is not carried",
                db.where,
            )
        scheme = conf.get("default_pass_scheme")
        if scheme:
            self.out.set("auth.sql", "default_pass_scheme", scheme)
        for key, setting in conf.settings.items():
            if key not in ("driver", "connect", "password_query", "default_pass_scheme"):
                self.skip(f"{path}: {key}", "no mailslot equivalent", setting.where)

    def userdbs(self, passdb: Section | None, userdbs: list[Section]) -> None:
        passdb = passdb or Section("passdb")
        passdb_path = _args(passdb.get("args") or "")[1]
        for db in userdbs:
            driver = (db.get("driver") or "").lower()
            options, path = _args(db.get("args") or "")
            if (
                driver == "passwd-file"
                and path == passdb_path
                and (passdb.get("driver") == "passwd-file")
            ):
                self.same_uid(path)
                continue
            if driver == "static":
                self.static_userdb(db, options)
                continue
            if driver == "prefetch":
                continue  # the passdb's own answer
            self.skip(
                f"userdb {{ driver = {driver} }}",
                "mailslot takes homes from the passwd-file and serves every user as [server] user",
                db.where,
            )

    def static_userdb(self, db: Section, options: dict[str, str]) -> None:
        for key in ("uid", "gid"):
            if key in options:
                value = options.pop(key)
                name = _account(value, group=key == "gid")
                if name is None:
                    self.skip(
                        f"userdb static {{ args {key}={value} }}", "no such account", db.where
                    )
                else:
                    self.out.set("server", "user" if key == "uid" else "group", name)
        home = options.pop("home", None)
        if home is not None:
            converted, unknown = template(home, lowered=self.lowered())
            if unknown:
                self.skip(
                    f"userdb static {{ args home={home} }}",
                    f"{', '.join(unknown)} has no mailslot equivalent",
                    db.where,
                )
            else:
                self.static_home = converted
        for key in options:
            self.skip(f"userdb static {{ args {key}= }}", "no mailslot equivalent", db.where)

    def same_uid(self, path: str | None) -> None:
        """Dovecot runs each user's mail process as the userdb's uid: when every line of the
        passwd-file has the same one, that account is mailslot's [server] user."""
        if path is None or "%" in path or "user" in self.out.tables.get("server", {}):
            return
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return
        uids = {
            tuple([*line.split(":"), "", "", ""][2:4])
            for line in lines
            if line.strip() and not line.startswith("#")
        }
        if len(uids) == 1:
            uid, gid = next(iter(uids))
            user = _account(uid, group=False) if uid else None
            group = _account(gid, group=True) if gid else None
            if user is not None:
                self.out.set("server", "user", user)
                if group is not None:
                    self.out.set("server", "group", group)
                self.out.notes.append(
                    f"every user in {path} has uid {uid}: mailslot serves as {user}"
                )

    # -- [store] ---------------------------------------------------------------------------

    def store(self) -> None:
        self.maildir()
        uidl = self.value("pop3_uidl_format")
        try:
            UidlFormat(uidl)
        except ValueError as exc:
            self.skip(f"pop3_uidl_format = {uidl}", f"{exc}", self.where("pop3_uidl_format"))
        else:
            self.out.set("store", "uidl_format", uidl)
            if _yes(self.value("pop3_reuse_xuidl")):
                self.out.set("store", "reuse_xuidl", True)
            flag = self.value("pop3_deleted_flag")
            if flag:
                self.out.set("store", "deleted_flag", flag)
        self.out.set("store", "flag_updates", not _yes(self.value("pop3_no_flag_updates")))
        lock = _yes(self.value("pop3_lock_session"))
        self.out.set("store", "lock_session", lock)
        if not lock:
            self.out.notes.append(
                "pop3_lock_session = no (Dovecot's default): [store] lock_session = false lets "
                "two sessions open one maildrop as Dovecot does; true gives RFC 1939's "
                "exclusive lock"
            )
            connections = self.value("mail_max_userip_connections")
            if connections.isdigit() and int(connections) > 0:
                self.out.set("limits", "max_sessions_per_user", int(connections))
                self.out.notes.append(
                    f"mail_max_userip_connections = {connections}: a limit per user in "
                    "mailslot ([limits] max_sessions_per_user), per user and address in Dovecot"
                )
        workarounds = self.value("pop3_client_workarounds").split()
        known = [w for w in workarounds if w in WORKAROUNDS]
        if known:
            self.out.set("store", "client_workarounds", known)
        for other in workarounds:
            if other not in WORKAROUNDS:
                self.skip(
                    f"pop3_client_workarounds {other}",
                    "mailslot knows outlook-no-nuls and oe-ns-eoh",
                    self.where("pop3_client_workarounds"),
                )

    def maildir(self) -> None:
        location = self.value("mail_location")
        where = self.where("mail_location")
        if not location:
            self.skip(
                "mail_location", "empty: Dovecot guesses; set [store] maildir yourself", where
            )
            return
        kind, _, rest = location.partition(":")
        if kind != "maildir":
            self.skip(
                f"mail_location = {location}",
                f"{kind or 'this'} is not Maildir; mailslot serves Maildir only: [store] "
                "maildir is left at its default",
                where,
            )
            return
        path, *options = rest.split(":")
        for option in options:
            name = option.partition("=")[0].upper()
            if name == "CONTROL":
                reason = (
                    "dovecot-uidlist lives there, but mailslot reads it in the Maildir: "
                    "UIDLs would differ; move the control files into the Maildirs first"
                )
            elif name in ("INDEX", "VOLATILEDIR"):
                reason = "mailslot reads no Dovecot index files; nothing to carry over"
            elif name == "LAYOUT":
                reason = "folder layout; POP3 serves the INBOX only"
            else:
                reason = "no mailslot equivalent"
            self.skip(f"mail_location :{option}", reason, where)
        converted, unknown = template(path, lowered=self.lowered())
        if unknown:
            self.skip(
                f"mail_location = {location}",
                f"{', '.join(unknown)} has no mailslot equivalent ({{user}}, {{localpart}}, "
                "{domain}, {home}); [store] maildir is left at its default",
                where,
            )
            return
        tilde = converted.startswith("~/")
        if tilde:
            converted = "{home}" + converted[1:]
        if self.static_home is not None:
            converted = converted.replace("{home}", self.static_home.rstrip("/"))
        elif "{home}" in converted:
            if self.out.tables.get("auth", {}).get("backend") != "passwd-file":
                self.out.notes.append(
                    "mail_location uses the home directory, which mailslot takes from a "
                    "passwd-file's home field: check that this user database gives one"
                )
            if tilde:
                converted = "~" + converted.removeprefix("{home}")
        self.out.set("store", "maildir", converted)

    # -- [log] -----------------------------------------------------------------------------

    def log(self) -> None:
        logout = self.value("pop3_logout_format")
        if logout != LOGOUT_FORMAT:
            self.out.set("log", "logout_format", logout)


def _all_prefixed(path: str) -> bool:
    """Whether every password in the passwd-file at ``path`` names its scheme (``{...}``)."""
    if "{" in path:
        return False  # one file per domain: not read here
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    entries = [line.split(":") for line in lines if line.strip() and not line.startswith("#")]
    return all(len(fields) > 1 and fields[1].startswith("{") for fields in entries)


def _has_settings(section: Section) -> bool:
    return bool(section.settings) or any(_has_settings(inner) for inner in section.sections)


def _account(value: str, *, group: bool) -> str | None:
    """The account name for a Dovecot uid/gid setting (a name or a number)."""
    try:
        if value.isdigit():
            return grp.getgrgid(int(value)).gr_name if group else pwd.getpwuid(int(value)).pw_name
        return grp.getgrnam(value).gr_name if group else pwd.getpwnam(value).pw_name
    except (KeyError, OverflowError):
        return None


def _args(args: str) -> tuple[dict[str, str], str | None]:
    """``scheme=X username_format=%n /path`` into options and the path (the last word)."""
    options: dict[str, str] = {}
    path: str | None = None
    for word in args.split():
        key, equals, value = word.partition("=")
        if equals and not word.startswith("/"):
            options[key] = value
        else:
            path = word
    return options, path


def _connect_fields(connect: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for word in re.findall(r"(\w+)=(\"[^\"]*\"|'[^']*'|\S+)", connect):
        fields[word[0]] = word[1].strip("'\"")
    return fields


def _dsn(driver: str, connect: str) -> tuple[str, list[str]]:
    """Dovecot's ``connect = host=... dbname=... user=... password=...`` as a URL."""
    fields = _connect_fields(connect)
    host = fields.pop("host", "localhost")
    port = fields.pop("port", "")
    user = fields.pop("user", "")
    password = fields.pop("password", "")
    dbname = fields.pop("dbname", "")
    scheme = "postgresql" if driver == "postgresql" else "mysql"
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    if host.startswith("/"):
        netloc = f"{auth}@" if auth else ""
        # asyncpg takes a socket directory as ?host=, aiomysql a socket file as ?unix_socket=.
        parameter = "host" if scheme == "postgresql" else "unix_socket"
        query = f"?{parameter}={quote(host, safe='/')}"
    else:
        netloc = (f"{auth}@" if auth else "") + host + (f":{port}" if port else "")
        query = ""
    return f"{scheme}://{netloc}/{quote(dbname, safe='')}{query}", sorted(fields)


def convert(root: Section, *, base: Path | None = None) -> Imported:
    """Map ``root`` (a parsed configuration); ``base`` resolves relative file names."""
    return Mapper(root, base=base).run()
