"""The ``mailslot`` command: parse, load the configuration, hand over (docs/cli.md).

One small ``add_<command>`` function per subcommand registers its parser and handler, so adding
a command is a few lines.  Exit codes follow BSD sysexits(3), which service managers and mail
transfer agents understand: 64 usage, 67 unknown user, 69 unavailable, 70 internal error,
71 cannot drop privileges, 73 cannot create, 75 cannot start (a port in use), 77 permission
denied (the admin socket), 78 configuration error (root without ``[server] user`` and a
certificate or key that fails its checks included).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import glob
import importlib
import inspect
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mailslot import __version__
from mailslot.config import Config, ConfigError, ConfigProblem, load

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_CONFIG = 78

Handler = Callable[[argparse.Namespace], int]
SubParsers = Any  # argparse._SubParsersAction is private; its type parameters are not public


class CommandError(Exception):
    """A failure to report as one line on stderr, with the exit code to return."""

    def __init__(self, message: str, code: int = EX_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _subparser(
    subparsers: SubParsers,
    name: str,
    summary: str,
    description: str,
    examples: str,
    handler: Handler | None,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def _print_problems(error: ConfigError) -> None:
    for problem in error.problems:
        print(problem.format(error.source), file=sys.stderr)
    count = len(error.problems)
    print(f"{count} problem{'s' if count != 1 else ''} in the configuration", file=sys.stderr)


def _load(path: Path, *, check_files: bool = True) -> Config:
    try:
        return load(path, check_files=check_files)
    except ConfigError as error:
        _print_problems(error)
        raise CommandError("", EX_CONFIG) from error


def _check_identity(config: Config, *, starting: bool) -> None:
    """``[server] user``, ``group`` and ``run_as_root`` against who runs this command (root
    without a user is refused): reported and exited 78 like any configuration problem.
    ``starting``: also that this process can become the user (``check-config`` may be run by
    another account than the server).  Run as root, also that the user can read the
    passwd-file."""
    from mailslot import privileges
    from mailslot.tomllines import KeyLines

    found = privileges.problems(config.server)
    if starting and not found:
        try:
            privileges.target(config.server)
        except privileges.PrivilegeError as exc:
            found = [exc]
    if not found and config.server.user is not None and config.auth.passwd_file is not None:
        # Read after the drop (and again whenever it changes): a file only root can read
        # would stop the server at its first worker.  Only root can ask (and check-config
        # run by someone else than root may not be able to become the user: not asked).
        try:
            identity = privileges.target(config.server)
        except privileges.PrivilegeError:
            identity = None
        if identity is not None and privileges.unreadable(identity, [config.auth.passwd_file]):
            found = [
                privileges.PrivilegeError(
                    "auth.passwd_file",
                    f"{config.auth.passwd_file} is not readable by {identity.user}:"
                    f"{identity.group}, who reads it once started as root (e.g. chgrp "
                    f"{identity.group} {config.auth.passwd_file}; chmod 0640 "
                    f"{config.auth.passwd_file})",
                )
            ]
    if not found:
        return
    try:
        lines = KeyLines(config.source.read_text(encoding="utf-8")) if config.source else None
    except (OSError, UnicodeDecodeError):
        lines = None
    problems = []
    for problem in found:
        table, _, key = problem.key.partition(".")
        line = lines.find(table, key) if lines is not None else None
        problems.append(ConfigProblem(problem.key, line, str(problem)))
    _print_problems(ConfigError(problems, config.source))
    raise CommandError("", EX_CONFIG)


def _check_certificates(
    config: Config, trusted: list[Path] | None = None, *, serving: bool = False
) -> None:
    """The certificate checks of :mod:`mailslot.tls.certificates`, shared by ``check-config``
    and ``serve``: errors printed and exited 78 like any configuration problem, each as
    ``FILE:LINE: KEY: message``; warnings printed the same way by ``check-config``, and
    logged by ``serve`` (whose standard error is its log, one record per line).
    ``trusted``: CA files the clients are known to hold."""
    from mailslot.tls.certificates import check_config

    tls = config.tls
    if config.acme.enabled and not all(
        p is not None and p.exists() for p in (tls.certificate, tls.private_key)
    ):
        # [acme] writes them: `serve` starts with a self-signed one (docs/acme.md).
        print(f"note: {tls.certificate} does not exist yet: [acme] will write it", file=sys.stderr)
        return
    findings = check_config(config, trusted=trusted or [])
    if not findings:
        return
    lines = _key_lines(config)
    problems = {
        severity: [
            ConfigProblem(f.key, _line_of(lines, f.key), f.message)
            for f in findings
            if f.severity == severity
        ]
        for severity in ("error", "warning")
    }
    if problems["error"]:
        _print_problems(ConfigError(problems["error"], config.source))
        raise CommandError("", EX_CONFIG)
    if serving:
        import logging

        from mailslot import log

        log.setup(config.log.level, config.log.format)  # the server's own; runner.run() keeps it
        for problem in problems["warning"]:
            logging.getLogger("mailslot").warning("%s", problem.format(config.source))
        return
    for problem in problems["warning"]:
        warning = ConfigProblem(problem.key, problem.line, f"warning: {problem.message}")
        print(warning.format(config.source), file=sys.stderr)


def _key_lines(config: Config) -> Any:
    from mailslot.tomllines import KeyLines

    try:
        return KeyLines(config.source.read_text(encoding="utf-8")) if config.source else None
    except (OSError, UnicodeDecodeError):
        return None


def _line_of(lines: Any, dotted: str) -> int | None:
    """The line of ``tls.certificate`` or ``tls.certificates[1].private_key`` in the file."""
    if lines is None:
        return None
    where, _, key = dotted.rpartition(".")
    table, _, index = where.partition("[")
    line: int | None = lines.find(table, key, int(index.rstrip("]")) if index else None)
    return line


# -- serve -----------------------------------------------------------------------------------


def add_serve(subparsers: SubParsers) -> None:
    parser = _subparser(
        subparsers,
        "serve",
        "run the POP3 server",
        "Run the server until SIGTERM or SIGINT, which give open sessions\n"
        "server.shutdown_timeout seconds to end (a second one ends them at once).\n"
        "SIGHUP, or a change of the files, reloads the TLS certificates and keys without\n"
        "dropping sessions (with several workers: new workers start, the old ones end with\n"
        "their sessions). Certificates that fail their checks (see check-config) stop it\n"
        "with status 78. Started as root, it binds its ports and reads the TLS key, then\n"
        "serves as [server] user; without one it refuses to start (status 78) unless\n"
        "[server] run_as_root says why. With [acme] enabled it gets and renews its\n"
        "certificate itself (docs/acme.md), serving a self-signed one until the first.\n\n"
        "With --config, serve that configuration. Without it, use a quick-start data\n"
        "directory: on first run it is filled with a private CA, a localhost certificate,\n"
        "a user 'demo' with a random password (printed once), a Maildir with a welcome\n"
        "message and a mailslot.toml listening on 127.0.0.1 ports 1110 (STLS) and 1995\n"
        "(POP3S). Later runs reuse it.",
        "  mailslot serve                                  # quick start in ./mailslot-data\n"
        "  mailslot serve --data-dir /tmp/try-mailslot     # quick start elsewhere\n"
        "  mailslot serve --config /etc/mailslot/mailslot.toml\n",
        _serve,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, metavar="FILE", help="configuration file (TOML)")
    source.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="quick-start data directory (default: $MAILSLOT_DATA_DIR or ./mailslot-data)",
    )


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config) if args.config is not None else _quick_start(args.data_dir)
    _check_identity(config, starting=True)
    # The quick start's certificate is issued by its own CA, which its clients are told to
    # trust (ca.pem): no warning that this host's trust store lacks it.
    quick_ca = config.source.parent / "ca.pem" if config.source is not None else None
    trusted = [quick_ca] if args.config is None and quick_ca is not None else []
    if config.acme.enabled:  # a self-signed certificate until the CA's first (docs/acme.md)
        from mailslot.tls.acme.service import bootstrap

        bootstrap(config)
    _check_certificates(config, trusted, serving=True)
    # Imported late: `mailslot user` and `check-config` need none of the server's imports.
    runner = importlib.import_module("mailslot.server.runner")
    run: Callable[[Config], int] = runner.run
    return run(config)


def _quick_start(data_dir: Path | None) -> Config:
    from mailslot import quickstart

    directory = data_dir if data_dir is not None else quickstart.default_data_dir()
    existing = directory / "mailslot.toml"
    if existing.exists():
        # Before anything is made or printed: a port taken now would fail the server after
        # the one-time password had been shown.  (A new configuration gets free ports.)
        # Without file checks: a file the quick start makes (a deleted certificate) is
        # made again by prepare() below.
        _refuse_busy_ports(_load(existing, check_files=False), existing)
    try:
        start = quickstart.prepare(directory)
    except (OSError, ValueError) as exc:
        raise CommandError(
            f"cannot set up the quick start in {directory}: {exc}", EX_CANTCREAT
        ) from exc
    config = _load(start.config_path)
    quickstart.report(start, config, sys.stdout)
    _refuse_busy_ports(config, start.config_path)
    return config


def _refuse_busy_ports(config: Config, path: Path) -> None:
    from mailslot import quickstart

    busy = quickstart.busy_ports(config.listeners)
    if busy:
        for line in busy:
            print(f"mailslot: {line}", file=sys.stderr)
        raise CommandError(
            f"stop the program using the port, or change the port in {path}", EX_UNAVAILABLE
        )


# -- check-config ----------------------------------------------------------------------------


def add_check_config(subparsers: SubParsers) -> None:
    parser = _subparser(
        subparsers,
        "check-config",
        "validate a configuration file",
        "Validate a configuration file: TOML syntax, every key and value, that the\n"
        "passwd-file is readable, and every certificate and key as the server loads them\n"
        "(PEM, key match, chain order, expiry, names, key type, key file mode). Prints OK\n"
        "and a summary, or every problem with its key and line; warnings do not fail it.\n"
        "[auth.sql]'s password_query is checked for Dovecot variables mailslot binds;\n"
        "with --connect it is also run once against the database (a password column?).\n"
        "Exit status 0 when valid, 78 otherwise.",
        "  mailslot check-config --config /etc/mailslot/mailslot.toml\n"
        "  mailslot check-config --config /etc/mailslot/mailslot.toml --connect\n",
        _check_config,
    )
    parser.add_argument("--config", type=Path, metavar="FILE", required=True, help="file to check")
    parser.add_argument(
        "--connect",
        action="store_true",
        help='with [auth] backend = "sql": also connect to the database and run '
        "password_query once, for a user no database holds",
    )


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _check_identity(config, starting=False)
    _check_certificates(config)
    if args.connect and config.auth.backend == "sql":
        _probe_sql(config)
    _check_passwd_file(config)
    print(f"OK: {args.config}: {describe_listeners(config)}")
    return EX_OK


def _probe_sql(config: Config) -> None:
    """``check-config --connect``: the ``[auth.sql]`` database answers the query."""
    import asyncio

    from mailslot.auth.sqlcheck import probe

    found = asyncio.run(probe(config.auth.sql))
    if found:
        lines = _key_lines(config)
        problems = [
            ConfigProblem(f"auth.sql.{key}", _line_of(lines, f"auth.sql.{key}"), message)
            for key, message in found
        ]
        _print_problems(ConfigError(problems, config.source))
        raise CommandError("", EX_CONFIG)


def _check_passwd_file(config: Config) -> None:
    """Read the passwd-file (every per-domain one) as the server will and print, as warnings
    on ``auth.passwd_file``, what the server would log: unsupported extra fields, refused
    legacy schemes, names ``username_format`` never produces."""
    import logging

    from mailslot.auth import backends as auth_backends
    from mailslot.auth.base import AuthError

    template = config.auth.passwd_file
    if config.auth.backend != "passwd-file" or template is None:
        return
    paths = [template]
    if "{domain}" in str(template):
        head, _, tail = str(template).partition("{domain}")
        paths = sorted(Path(p) for p in glob.glob(glob.escape(head) + "*" + glob.escape(tail)))
    found: list[str] = []
    quiet = logging.getLogger("mailslot.auth.passwdfile")
    was, quiet.disabled = quiet.disabled, True  # printed below instead
    try:
        for path in paths:
            auth = auth_backends.passwd_file(config, path)
            try:
                auth.load()
            except AuthError:
                continue  # check_files reported it already
            found.extend(auth.problems)
    finally:
        quiet.disabled = was
    line = _line_of(_key_lines(config), "auth.passwd_file")
    for message in found:
        warning = ConfigProblem("auth.passwd_file", line, f"warning: {message}")
        print(warning.format(config.source), file=sys.stderr)


def describe_listeners(config: Config) -> str:
    parts = []
    for lst in config.listeners:
        where = str(lst.path) if lst.path is not None else _host_port(lst.address, lst.port)
        extra = ", PROXY protocol" if lst.proxy_protocol else ""
        parts.append(f"{lst.protocol} on {where} (tls {lst.tls}{extra})")
    count = len(parts)
    return f"{count} listener{'s' if count != 1 else ''}: " + "; ".join(parts)


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# -- user ------------------------------------------------------------------------------------


def add_user(subparsers: SubParsers) -> None:
    from mailslot.auth.schemes import HASH_SCHEMES

    database = argparse.ArgumentParser(add_help=False)
    group = database.add_argument_group("user database (one is required)")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help='use the user database of FILE: [auth] passwd_file, or backend = "postgresql"',
    )
    which.add_argument("--passwd-file", type=Path, metavar="FILE", help="use this passwd-file")
    password = argparse.ArgumentParser(add_help=False)
    password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password as one line from stdin (implied when stdin is not a terminal)",
    )

    user = _subparser(
        subparsers,
        "user",
        "manage users in a passwd-file",
        "Add, change, delete and list users of a Dovecot-compatible passwd-file.\n"
        "Passwords are never taken from the command line (it is visible to other users):\n"
        "they are asked twice on a terminal, or read as one line from standard input.",
        "  mailslot user add --config /etc/mailslot/mailslot.toml alice\n"
        "  printf '%s\\n' \"$PW\" | mailslot user passwd --passwd-file users alice\n"
        "  mailslot user list --passwd-file users\n",
        None,
    )
    actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = _subparser(
        actions,
        "add",
        "add a user",
        "Add a user with a new password, hashed with --scheme.",
        "  mailslot user add --config mailslot.toml alice\n"
        "  mailslot user add --passwd-file users --home /home/bob bob < password.txt\n",
        _user_add,
        parents=[database, password],
    )
    add.add_argument(
        "--scheme",
        type=str.upper,
        default="ARGON2ID",
        choices=HASH_SCHEMES,
        help="password hash scheme (default: ARGON2ID)",
    )
    add.add_argument(
        "--home", metavar="DIR", help="home directory ({home} and ~/ in [store] maildir)"
    )
    add.add_argument("name", metavar="NAME")
    passwd = _subparser(
        actions,
        "passwd",
        "set a user's password",
        "Replace a user's password (the scheme of the new hash is ARGON2ID).",
        "  mailslot user passwd --config mailslot.toml demo\n",
        _user_passwd,
        parents=[database, password],
    )
    passwd.add_argument("name", metavar="NAME")
    delete = _subparser(
        actions,
        "delete",
        "delete a user",
        "Delete a user from the passwd-file. Their mail is left in place.",
        "  mailslot user delete --config mailslot.toml alice\n",
        _user_delete,
        parents=[database],
    )
    delete.add_argument("name", metavar="NAME")
    _subparser(
        actions,
        "list",
        "list users",
        "Print the user names of the passwd-file, one per line.",
        "  mailslot user list --config mailslot.toml\n",
        _user_list,
        parents=[database],
    )


def _passwd_file(args: argparse.Namespace, name: str | None = None) -> Any:
    """The passwd-file's Path, or, for ``[auth] backend = "postgresql"``, the table's admin
    (mailslot.auth.postgresql.PostgresUsers, whose methods are coroutines).

    A per-domain ``passwd_file`` (``{domain}``) is the file of ``name``'s domain; without a
    name (``list``) or a domain, the command is refused rather than a file named
    ``{domain}`` created."""
    if args.passwd_file is not None:
        return Path(args.passwd_file)
    # The passwd-file may not exist yet when the first user is added.
    config = _load(args.config, check_files=False)
    if config.auth.backend == "sql":
        raise CommandError(
            f'{args.config}: [auth] backend = "sql": the users are in the site\'s own table,'
            " which mailslot user does not change (use the tools that manage it)",
            EX_CONFIG,
        )
    if config.auth.backend == "postgresql":
        from mailslot.auth.postgresql import PostgresUsers
        from mailslot.store import backends
        from mailslot.store.postgresql.pool import LazyPool

        try:
            return PostgresUsers(LazyPool(backends.resolve_dsn(config.store), size=1))
        except backends.DsnMissing as exc:
            raise CommandError(str(exc), EX_CONFIG) from exc
    if config.auth.backend == "dovecot":
        raise CommandError(
            f'{args.config}: [auth] backend = "dovecot": the users are Dovecot\'s, '
            "manage them in Dovecot's passdb",
            EX_CONFIG,
        )
    if config.auth.passwd_file is None:
        raise CommandError(f"{args.config} has no [auth] passwd_file", EX_CONFIG)
    template = str(config.auth.passwd_file)
    if "{domain}" not in template:
        return config.auth.passwd_file
    from mailslot.auth.passwdfile import domain_of

    domain = None if name is None else domain_of(name)
    if domain is None:
        raise CommandError(
            f"[auth] passwd_file has one file per domain ({template}): give a user@domain "
            "name, or --passwd-file FILE",
            EX_USAGE,
        )
    return Path(template.replace("{domain}", domain))


def _database_call(coroutine: Coroutine[Any, Any, object]) -> None:
    from mailslot.store.postgresql.pool import DATABASE_ERRORS, describe

    try:
        asyncio.run(coroutine)
    except DATABASE_ERRORS as exc:
        raise CommandError(f"the user database: {describe(exc)}", EX_UNAVAILABLE) from exc


def _valid_name(name: str) -> str:
    from mailslot.auth.usernames import InvalidUsername, validate

    try:
        return validate(name)
    except InvalidUsername as exc:
        raise CommandError(f"invalid user name: {exc}") from exc


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise CommandError("no password on standard input (expected one line)")
        # Only the line ending is removed: leading and trailing spaces may be part of it.
        password = line.rstrip("\r\n")
    else:
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat the password: ") != password:
            raise CommandError("the passwords do not match")
    if not password:
        raise CommandError("the password is empty")
    return password


def _admin_call(action: Callable[[], object], name: str) -> None:
    from mailslot.auth import admin

    try:
        result = action()
        if inspect.iscoroutine(result):  # the PostgreSQL user table
            _database_call(result)
    except admin.UserExists as exc:
        raise CommandError(f"user {name!r} already exists") from exc
    except admin.NoSuchUser as exc:
        raise CommandError(f"no user {name!r}", EX_NOUSER) from exc
    except OSError as exc:
        raise CommandError(f"{exc.filename or 'passwd-file'}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def _user_add(args: argparse.Namespace) -> int:
    from mailslot.auth import admin

    name = _valid_name(args.name)
    path = _passwd_file(args, name)
    password = _read_password(args)
    if isinstance(path, Path):
        _admin_call(
            lambda: admin.add_user(path, name, password, scheme=args.scheme, home=args.home), name
        )
    else:
        _admin_call(lambda: path.add_user(name, password, scheme=args.scheme, home=args.home), name)
    print(f"added {name!r} to {path}", file=sys.stderr)
    return EX_OK


def _user_passwd(args: argparse.Namespace) -> int:
    from mailslot.auth import admin

    name = _valid_name(args.name)
    path = _passwd_file(args, name)
    password = _read_password(args)
    if isinstance(path, Path):
        _admin_call(lambda: admin.set_password(path, name, password), name)
    else:
        _admin_call(lambda: path.set_password(name, password), name)
    print(f"changed the password of {name!r} in {path}", file=sys.stderr)
    return EX_OK


def _user_delete(args: argparse.Namespace) -> int:
    from mailslot.auth import admin

    name = _valid_name(args.name)
    path = _passwd_file(args, name)
    if isinstance(path, Path):
        _admin_call(lambda: admin.delete_user(path, name), name)
    else:
        _admin_call(lambda: path.delete_user(name), name)
    print(f"deleted {name!r} from {path}", file=sys.stderr)
    return EX_OK


def _user_list(args: argparse.Namespace) -> int:
    from mailslot.auth import admin

    path = _passwd_file(args)
    names: list[str] = []
    if isinstance(path, Path):
        _admin_call(lambda: names.extend(admin.list_users(path)), "")
    else:

        async def listed() -> None:
            names.extend(await path.list_users())

        _admin_call(listed, "")
    for name in names:
        print(name)
    return EX_OK


# -- deliver ---------------------------------------------------------------------------------


def add_deliver(subparsers: SubParsers) -> None:
    """``mailslot deliver`` lives with the delivery code; it registers itself when present.

    Contract: ``mailslot.delivery.command.register(subparsers)`` adds its parser and sets
    ``handler`` (``(argparse.Namespace) -> int``) with ``set_defaults``.
    """
    try:
        command = importlib.import_module("mailslot.delivery.command")
    except ModuleNotFoundError as exc:
        if exc.name != "mailslot.delivery.command":
            raise
        return
    register: Callable[[SubParsers], None] = command.register
    register(subparsers)


def add_systemd_unit(subparsers: SubParsers) -> None:
    parser = _subparser(
        subparsers,
        "systemd-unit",
        "print or install hardened systemd units for a configuration",
        "Print a hardened mailslot.service for --config FILE (Type=notify: the server says\n"
        "when it serves and when it reloads; SIGHUP reloads the certificate; the file system\n"
        "is read-only to it but for the maildrops' root and the LMTP socket's directory).\n"
        "With --socket, also mailslot.socket: systemd binds the POP3 ports and hands them to\n"
        "the server (socket activation). With --install, write them into --directory and\n"
        "say which systemctl commands to run. docs/systemd.md lists every option and why.",
        "  mailslot systemd-unit --config /etc/mailslot/mailslot.toml\n"
        "  mailslot systemd-unit --config /etc/mailslot/mailslot.toml --socket --install\n",
        _systemd_unit,
    )
    parser.add_argument("--config", type=Path, metavar="FILE", required=True)
    parser.add_argument("--socket", action="store_true", help="also mailslot.socket")
    parser.add_argument(
        "--install", action="store_true", help="write the units instead of printing them"
    )
    parser.add_argument(
        "--directory",
        type=Path,
        default=Path("/etc/systemd/system"),
        metavar="DIR",
        help="where --install writes (default: /etc/systemd/system)",
    )
    parser.add_argument(
        "--executable",
        metavar="PATH",
        help="the mailslot program ExecStart runs (default: this one)",
    )


def _systemd_unit(args: argparse.Namespace) -> int:
    from mailslot import systemd

    config_path = args.config.absolute()
    config = _load(config_path)
    program: list[str] = [args.executable] if args.executable else _this_program()
    units = {
        "mailslot.service": systemd.service_unit(
            config, config_path, program, socket_activated=args.socket
        )
    }
    if args.socket:
        units["mailslot.socket"] = systemd.socket_unit(config)
    if not args.install:
        print("\n".join(units.values()), end="")
        return EX_OK
    try:
        args.directory.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            (args.directory / name).write_text(text)
    except OSError as exc:
        raise CommandError(f"cannot write into {args.directory}: {exc}", EX_CANTCREAT) from exc
    first = "mailslot.socket" if args.socket else "mailslot.service"
    print(f"wrote {', '.join(str(args.directory / n) for n in units)}")
    print(f"now: systemctl daemon-reload && systemctl enable --now {first}")
    return EX_OK


def _this_program() -> list[str]:
    """The ``mailslot`` script beside this interpreter, else ``python -m mailslot``."""
    script = Path(sys.executable).with_name("mailslot")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mailslot"]


# -- sample-config ---------------------------------------------------------------------------


def add_sample_config(subparsers: SubParsers) -> None:
    _subparser(
        subparsers,
        "sample-config",
        "print a commented configuration for a production server",
        "Print a commented mailslot.toml for a production server: POP3S on 995 and STLS on\n"
        "110, certbot's certificate paths, a passwd-file, Maildirs, an LMTP socket for\n"
        "Postfix, [server] user, metrics off. Every setting of every table is in it with\n"
        "its default and a line on what it does; change the host name and the paths, then\n"
        "run check-config (docs/production.md).",
        "  mailslot sample-config > /etc/mailslot/mailslot.toml\n",
        _sample_config,
    )


def sample_config() -> str:
    """The sample shipped in the package (``mailslot/data/mailslot.toml``)."""
    from importlib.resources import files

    return files("mailslot").joinpath("data", "mailslot.toml").read_text(encoding="utf-8")


def _sample_config(args: argparse.Namespace) -> int:
    sys.stdout.write(sample_config())
    return EX_OK


# -- doctor ----------------------------------------------------------------------------------


def add_doctor(subparsers: SubParsers) -> None:
    """``mailslot doctor`` lives in its own package (a client: it imports nothing of the
    server); ``mailslot.doctor.command.register(subparsers)`` adds its parser and handler.
    ``--config`` is read by :mod:`mailslot.hostcheck`, imported only when it is given."""
    from mailslot.doctor.command import HostSide, register

    def load_host_side(path: Path) -> HostSide | None:
        from mailslot import hostcheck

        return hostcheck.load(path)

    register(subparsers, load_host_side)


# -- acme ------------------------------------------------------------------------------------


def add_acme(subparsers: SubParsers) -> None:
    """``mailslot acme``: :mod:`mailslot.tls.acme.command` adds its parser and handler."""
    from mailslot.tls.acme.command import register

    register(subparsers, _load)


# -- admin socket ----------------------------------------------------------------------------


def add_admin(subparsers: SubParsers) -> None:
    """``who``, ``kick``, ``mailbox status``, ``reload``, ``stop``: clients of the admin socket
    (:mod:`mailslot.admin.command`)."""
    from mailslot.admin.command import register

    register(subparsers)


# -- db --------------------------------------------------------------------------------------


def add_db(subparsers: SubParsers) -> None:
    parser = _subparser(
        subparsers,
        "db",
        "create or upgrade the PostgreSQL store's schema",
        "For [store] backend = \"postgresql\" (docs/postgresql.md). 'upgrade' creates the\n"
        "schema in an empty database or applies what it lacks, in one transaction: running it\n"
        "twice is harmless. 'status' shows the version found and the one needed. A server\n"
        "refuses to start (status 78) on a schema it does not know. Exit status: 0 done,\n"
        "69 the database cannot be reached, 75 (status) older than needed, 78 a configuration\n"
        "problem or a schema newer than this mailslot.",
        "  mailslot db upgrade --config /etc/mailslot/mailslot.toml\n"
        "  MAILSLOT_DSN=postgresql://mailslot@db/mail mailslot db status --config mailslot.toml\n",
        _db,
    )
    parser.add_argument("action", choices=("upgrade", "status"), help="what to do")
    parser.add_argument("--config", type=Path, metavar="FILE", required=True, help="config file")


def _db(args: argparse.Namespace) -> int:
    config = _load(args.config, check_files=False)
    command = importlib.import_module("mailslot.store.postgresql.command")
    run: Callable[[Config, str], int] = command.run
    return run(config, args.action)


# -- import-dovecot --------------------------------------------------------------------------


def add_import_dovecot(subparsers: SubParsers) -> None:
    parser = _subparser(
        subparsers,
        "import-dovecot",
        "write a mailslot.toml equivalent to a Dovecot 2.3 configuration",
        "Read a Dovecot 2.3 configuration (through 'doveconf -n' where Dovecot is installed,\n"
        "else the files and their !include directives) and write an equivalent mailslot.toml:\n"
        "listeners, certificates, passdb, mail_location, UIDL format, flags. Every setting\n"
        "that could not be carried over is listed on stderr and as comments in the file, with\n"
        "the reason. Exit status 0 written, 65 the Dovecot configuration cannot be read, 73\n"
        "the output cannot be written (or exists, without --force).",
        "  mailslot import-dovecot --from /etc/dovecot/dovecot.conf --output mailslot.toml\n"
        "  mailslot check-config --config mailslot.toml\n",
        _import_dovecot,
    )
    parser.add_argument(
        "--from", dest="source", type=Path, metavar="DOVECOT_CONF", required=True,
        help="dovecot.conf to read",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, metavar="MAILSLOT_TOML", required=True, help="file to write"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--no-doveconf", action="store_true", help="parse the files even if doveconf is installed"
    )


def _import_dovecot(args: argparse.Namespace) -> int:
    command = importlib.import_module("mailslot.dovecotconf.command")
    run: Callable[[argparse.Namespace], int] = command.run
    return run(args)


def add_migrate(subparsers: SubParsers) -> None:
    """``mailslot migrate`` (Maildir into PostgreSQL) lives in :mod:`mailslot.migration`."""
    command = importlib.import_module("mailslot.migration.command")
    register: Callable[[SubParsers], None] = command.register
    register(subparsers)


# -- main ------------------------------------------------------------------------------------

COMMANDS: tuple[Callable[[SubParsers], None], ...] = (
    add_serve,
    add_check_config,
    add_user,
    add_deliver,
    add_systemd_unit,
    add_sample_config,
    add_doctor,
    add_acme,
    add_db,
    add_import_dovecot,
    add_admin,
    add_migrate,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailslot",
        description="mailslot: a POP3 server with POP3S (RFC 8314) and STLS (RFC 2595) "
        "over Maildir.",
        epilog="Run 'mailslot COMMAND --help' for a command's options and examples.\n"
        "Start with 'mailslot serve' for a working server on 127.0.0.1.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mailslot {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``mailslot`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandError as error:
        if str(error):
            print(f"mailslot: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return 130
