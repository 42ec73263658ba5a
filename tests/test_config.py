"""config.load/loads: TOML into frozen dataclasses, every problem reported with key and line."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

from mailslot.config import (
    Config,
    ConfigError,
    ConfigProblem,
    LimitsConfig,
    ListenerConfig,
    load,
    loads,
)

BASE = """\
[[listener]]
address = "127.0.0.1"
port = 1995
tls = "implicit"

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[auth]
passwd_file = "users"
"""


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    for name in ("cert.pem", "key.pem", "users"):
        (tmp_path / name).write_text("placeholder\n")
    return tmp_path


def parse(conf_dir: Path, text: str, **kwargs: bool) -> Config:
    return loads(textwrap.dedent(text), conf_dir / "mailslot.toml", **kwargs)


def problems(conf_dir: Path, text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse(conf_dir, text)
    return info.value.problems


def only(conf_dir: Path, text: str) -> ConfigProblem:
    found = problems(conf_dir, text)
    assert len(found) == 1, found
    return found[0]


# -- values that load ------------------------------------------------------------------------


def test_minimal_file_gets_documented_defaults(conf_dir: Path) -> None:
    config = parse(conf_dir, BASE)
    assert config.listeners == (
        ListenerConfig(protocol="pop3", address="127.0.0.1", port=1995, tls="implicit"),
    )
    assert config.limits == LimitsConfig()
    assert config.limits.idle_timeout == 600.0
    assert config.auth.allow_plaintext_without_tls is False
    assert config.source == conf_dir / "mailslot.toml"


def test_relative_paths_are_relative_to_the_config_file(conf_dir: Path) -> None:
    sub = conf_dir / "etc"
    sub.mkdir()
    for name in ("cert.pem", "key.pem", "users"):
        (sub / name).write_text("x\n")
    config = loads(BASE + '[store]\nmaildir = "mail/{user}"\n', sub / "mailslot.toml")
    assert config.tls.certificate == sub / "cert.pem"
    assert config.tls.private_key == sub / "key.pem"
    assert config.auth.passwd_file == sub / "users"
    assert config.store.maildir == f"{sub}/mail/{{user}}"


def test_absolute_paths_and_home_templates_are_kept(conf_dir: Path) -> None:
    cert = conf_dir / "cert.pem"
    text = BASE.replace('"cert.pem"', f'"{cert}"') + '[store]\nmaildir = "{home}/Maildir"\n'
    config = parse(conf_dir, text)
    assert config.tls.certificate == cert
    assert config.store.maildir == "{home}/Maildir"


def test_tilde_maildir_means_home(conf_dir: Path) -> None:
    config = parse(conf_dir, BASE + '[store]\nmaildir = "~/Maildir"\n')
    assert config.store.maildir == "{home}/Maildir"


def test_port_defaults_follow_tls_mode(conf_dir: Path) -> None:
    config = parse(
        conf_dir,
        BASE
        + '[[listener]]\naddress = "::1"\ntls = "implicit"\n'
        + '[[listener]]\naddress = "::1"\n',
    )
    assert [(lst.port, lst.tls) for lst in config.listeners[1:]] == [
        (995, "implicit"),
        (110, "starttls"),
    ]


def test_lmtp_unix_socket_listener_defaults_to_plain(conf_dir: Path) -> None:
    config = parse(conf_dir, BASE + '[[listener]]\nprotocol = "lmtp"\npath = "lmtp.sock"\n')
    lmtp = config.listeners[1]
    assert lmtp.path == conf_dir / "lmtp.sock"
    assert lmtp.tls == "none"


def test_integers_are_accepted_for_float_keys(conf_dir: Path) -> None:
    config = parse(conf_dir, BASE + "[limits]\nidle_timeout = 900\nlogin_timeout = 2.5\n")
    assert config.limits.idle_timeout == 900.0
    assert isinstance(config.limits.idle_timeout, float)
    assert config.limits.login_timeout == 2.5


def test_delivery_domains_become_a_tuple(conf_dir: Path) -> None:
    config = parse(conf_dir, BASE + '[delivery]\ndomains = ["example.org", "example.net"]\n')
    assert config.delivery.domains == ("example.org", "example.net")


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "::1", "192.0.2.7", "localhost"])
def test_address_literals_are_accepted(conf_dir: Path, address: str) -> None:
    config = parse(conf_dir, BASE.replace('"127.0.0.1"', f'"{address}"'))
    assert config.listeners[0].address == address


def test_config_is_frozen(conf_dir: Path) -> None:
    config = parse(conf_dir, BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.idle_timeout = 1  # type: ignore[misc]


def test_load_reads_the_file(conf_dir: Path) -> None:
    path = conf_dir / "mailslot.toml"
    path.write_text(BASE)
    assert load(path).listeners[0].port == 1995


# -- problems --------------------------------------------------------------------------------


def test_unknown_key_suggests_the_near_one_with_its_line(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + "\n[limits]\nidle_timout = 900\n")
    assert problem.key == "limits.idle_timout"
    assert problem.line == 14
    assert 'did you mean "idle_timeout"' in problem.message


def test_unknown_key_without_near_match_lists_allowed(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + "[log]\ncolour = true\n")
    assert problem.key == "log.colour"
    assert "allowed keys are level" in problem.message


def test_unknown_table(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + "[limit]\nmax_connections = 3\n")
    assert problem.key == "limit"
    assert problem.line == 12
    assert 'did you mean "limits"' in problem.message


def test_setting_outside_its_table_says_where_it_belongs(conf_dir: Path) -> None:
    problem = only(conf_dir, 'hostname = "mail.example.org"\n' + BASE)
    assert problem.key == "hostname"
    assert problem.line == 1
    assert "move it under [server]" in problem.message


def test_second_listener_problem_points_at_its_own_line(conf_dir: Path) -> None:
    text = BASE + '\n[[listener]]\naddress = "127.0.0.1"\nport = 1110\ntls = "ssl"\n'
    problem = only(conf_dir, text)
    assert problem.key == "listener[1].tls"
    assert problem.line == 16
    assert '"implicit", "starttls", "none"' in problem.message
    assert '"ssl"' in problem.message


def test_bad_protocol(conf_dir: Path) -> None:
    problem = only(
        conf_dir, BASE.replace('tls = "implicit"', 'tls = "implicit"\nprotocol = "imap"')
    )
    assert problem.key == "listener[0].protocol"
    assert problem.line == 5
    assert '"pop3", "lmtp"' in problem.message


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ("port = 1995", 'port = "995"', "listener[0].port", "must be an integer"),
        ("port = 1995", "port = 995.0", "listener[0].port", "must be an integer"),
        (
            "port = 1995",
            "proxy_protocol = 1",
            "listener[0].proxy_protocol",
            "must be true or false",
        ),
        ("port = 1995", "port = [995]", "listener[0].port", "not an array"),
        ('address = "127.0.0.1"', "address = 127", "listener[0].address", "must be a string"),
    ],
)
def test_wrong_types(conf_dir: Path, old: str, new: str, key: str, expected: str) -> None:
    problem = only(conf_dir, BASE.replace(old, new))
    assert problem.key == key
    assert expected in problem.message
    assert problem.line == BASE.splitlines().index(old) + 1


def test_bool_is_not_an_integer(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + "[limits]\nmax_connections = true\n")
    assert problem.key == "limits.max_connections"
    assert "an integer" in problem.message


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_range(conf_dir: Path, port: int) -> None:
    problem = only(conf_dir, BASE.replace("port = 1995", f"port = {port}"))
    assert problem.key == "listener[0].port"
    assert problem.line == 3
    assert "between 1 and 65535" in problem.message


@pytest.mark.parametrize("address", ["example.com", "256.1.1.1", "127.0.0.1:995", ""])
def test_address_must_be_a_literal(conf_dir: Path, address: str) -> None:
    problem = only(conf_dir, BASE.replace('"127.0.0.1"', f'"{address}"'))
    assert problem.key == "listener[0].address"
    assert "not an IPv4 or IPv6 address" in problem.message


def test_tls_listener_requires_certificate_and_key(conf_dir: Path) -> None:
    text = BASE.replace('certificate = "cert.pem"\nprivate_key = "key.pem"\n', "")
    found = problems(conf_dir, text)
    assert [p.key for p in found] == ["tls.certificate", "tls.private_key"]
    assert all(p.line == 6 for p in found)  # the [tls] header
    assert 'listener[0] has tls = "implicit"' in found[0].message


def test_plain_listener_needs_no_certificate(conf_dir: Path) -> None:
    text = BASE.replace('tls = "implicit"', 'tls = "none"').replace(
        'certificate = "cert.pem"\nprivate_key = "key.pem"\n', ""
    )
    assert parse(conf_dir, text).tls.certificate is None


def test_certificate_must_exist(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE.replace('"cert.pem"', '"nope.pem"'))
    assert problem.key == "tls.certificate"
    assert problem.line == 7
    assert str(conf_dir / "nope.pem") in problem.message
    assert "does not exist" in problem.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files whatever their mode")
def test_certificate_must_be_readable(conf_dir: Path) -> None:
    (conf_dir / "key.pem").chmod(0)
    problem = only(conf_dir, BASE)
    assert problem.key == "tls.private_key"
    assert "not readable" in problem.message


def test_check_files_false_skips_existence(conf_dir: Path) -> None:
    text = BASE.replace('"cert.pem"', '"nope.pem"').replace('"users"', '"new-users"')
    config = parse(conf_dir, text, check_files=False)
    assert config.auth.passwd_file == conf_dir / "new-users"


def test_passwd_file_is_required_and_must_exist(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE.replace('passwd_file = "users"', ""))
    assert problem.key == "auth.passwd_file"
    assert "is required" in problem.message
    problem = only(conf_dir, BASE.replace('"users"', '"missing"'))
    assert problem.key == "auth.passwd_file"
    assert problem.line == 11
    assert "does not exist" in problem.message


def test_idle_timeout_minimum_is_ten_minutes(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + "[limits]\nidle_timeout = 599\n")
    assert problem.key == "limits.idle_timeout"
    assert problem.line == 13
    assert "RFC 1939" in problem.message
    assert parse(conf_dir, BASE + "[limits]\nidle_timeout = 600\n").limits.idle_timeout == 600


@pytest.mark.parametrize("value", ["0", "-1"])
def test_login_timeout_must_be_positive(conf_dir: Path, value: str) -> None:
    problem = only(conf_dir, BASE + f"[limits]\nlogin_timeout = {value}\n")
    assert problem.key == "limits.login_timeout"
    assert "more than 0" in problem.message


@pytest.mark.parametrize(
    "key", [f.name for f in dataclasses.fields(LimitsConfig) if f.type == "int"]
)
def test_integer_limits_must_be_positive(conf_dir: Path, key: str) -> None:
    found = problems(conf_dir, BASE + f"[limits]\n{key} = 0\n")
    assert found[0].key == f"limits.{key}"
    assert "positive" in found[0].message


def test_command_line_length_at_least_rfc2449(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + "[limits]\ncommand_line_length = 100\n")
    assert "RFC 2449" in problem.message


def test_failure_delays_are_consistent(conf_dir: Path) -> None:
    problem = only(
        conf_dir, BASE.replace('"users"', '"users"\nfailure_delay = 5\nfailure_delay_max = 1')
    )
    assert problem.key == "auth.failure_delay_max"
    assert problem.line == 13


def test_log_level_enum(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + '[log]\nlevel = "verbose"\n')
    assert problem.key == "log.level"
    assert "debug, info, warning, error, critical" in problem.message


@pytest.mark.parametrize("template", ["/var/mail/{usr}", "/var/mail/{user.name}", "/var/mail/{}"])
def test_maildir_unknown_placeholder(conf_dir: Path, template: str) -> None:
    problem = only(conf_dir, BASE + f'[store]\nmaildir = "{template}"\n')
    assert problem.key == "store.maildir"
    assert problem.line == 13
    assert "{user}, {localpart}, {domain}, {home}" in problem.message


def test_snapshot_cache_is_a_count_of_zero_or_more(conf_dir: Path) -> None:
    assert parse(conf_dir, BASE).store.snapshot_cache == 200_000
    assert parse(conf_dir, BASE + "[store]\nsnapshot_cache = 0\n").store.snapshot_cache == 0
    problem = only(conf_dir, BASE + "[store]\nsnapshot_cache = -1\n")
    assert problem.key == "store.snapshot_cache"
    assert "0 (none) or more" in problem.message


def test_dovecot_store_keys(conf_dir: Path) -> None:
    store = parse(conf_dir, BASE).store
    assert (store.uidl_format, store.reuse_xuidl, store.flag_updates) == (None, False, True)
    text = '[store]\nuidl_format = "%08Xu%08Xv"\nreuse_xuidl = true\nflag_updates = false\n'
    store = parse(conf_dir, BASE + text).store
    assert (store.uidl_format, store.reuse_xuidl, store.flag_updates) == ("%08Xu%08Xv", True, False)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('uidl_format = "%m"', "store.uidl_format", "not available for Maildir"),
        ('uidl_format = "%q"', "store.uidl_format", "unknown variable %q"),
        ('uidl_format = ""', "store.uidl_format", "must not be empty"),
        ("reuse_xuidl = true", "store.reuse_xuidl", "needs uidl_format"),
        ('flag_updates = "no"', "store.flag_updates", "true or false"),
        ('deleted_flag = "Gone"', "store.deleted_flag", "needs uidl_format"),
        ('uidl_format = "%u"\ndeleted_flag = "a b"', "store.deleted_flag", "not an IMAP keyword"),
        ('uidl_format = "%u"\ndeleted_flag = "\\\\Deleted"', "store.deleted_flag", "keyword"),
    ],
)
def test_dovecot_store_keys_are_validated(conf_dir: Path, text: str, key: str, words: str) -> None:
    problem = only(conf_dir, BASE + f"[store]\n{text}\n")
    assert problem.key == key
    assert words in problem.message


def test_maildir_must_separate_users(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + '[store]\nmaildir = "/var/mail/{domain}"\n')
    assert "share one maildrop" in problem.message


def test_unix_socket_is_only_for_lmtp(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + '[[listener]]\npath = "pop3.sock"\ntls = "none"\n')
    assert problem.key == "listener[1].path"
    assert problem.line == 13
    assert 'protocol = "lmtp"' in problem.message


def test_path_excludes_address_and_port(conf_dir: Path) -> None:
    found = problems(
        conf_dir, BASE + '[[listener]]\nprotocol = "lmtp"\npath = "l.sock"\nport = 24\n'
    )
    assert [p.key for p in found] == ["listener[1].port"]
    assert "not both" in found[0].message


def test_lmtp_needs_port_or_path(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + '[[listener]]\nprotocol = "lmtp"\n')
    assert problem.key == "listener[1]"
    assert problem.line == 12
    assert "port" in problem.message and "path" in problem.message


@pytest.mark.parametrize(("first", "second"), [("127.0.0.1", "127.0.0.1"), ("::", "::0")])
def test_duplicate_address_and_port(conf_dir: Path, first: str, second: str) -> None:
    text = BASE.replace('"127.0.0.1"', f'"{first}"')
    text += f'[[listener]]\naddress = "{second}"\nport = 1995\ntls = "implicit"\n'
    problem = only(conf_dir, text)
    assert problem.key == "listener[1].port"
    assert problem.line == 14
    assert "already used by listener[0]" in problem.message


def test_same_port_on_other_address_is_fine(conf_dir: Path) -> None:
    text = BASE + '[[listener]]\naddress = "::1"\nport = 1995\ntls = "implicit"\n'
    assert len(parse(conf_dir, text).listeners) == 2


def test_listener_must_be_an_array_of_tables(conf_dir: Path) -> None:
    text = BASE.replace("[[listener]]", "[listener]")
    found = problems(conf_dir, text)
    assert found[0].key == "listener"
    assert "[[listener]]" in found[0].message


def test_no_listener(conf_dir: Path) -> None:
    problem = only(conf_dir, '[auth]\npasswd_file = "users"\n')
    assert "at least one" in problem.message


def test_every_problem_is_reported_in_line_order(conf_dir: Path) -> None:
    text = BASE.replace("port = 1995", "port = 0") + "[limits]\nidle_timeout = 1\nfoo = 2\n"
    found = problems(conf_dir, text)
    assert [(p.key, p.line) for p in found] == [
        ("listener[0].port", 3),
        ("limits.idle_timeout", 13),
        ("limits.foo", 14),
    ]


def test_error_text_names_file_line_and_key(conf_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse(conf_dir, BASE.replace("port = 1995", "port = 0"))
    assert str(info.value).startswith(f"{conf_dir / 'mailslot.toml'}:3: listener[0].port: ")


def test_toml_syntax_error_has_its_line(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + "[limits]\nidle_timeout = = 3\n")
    assert problem.line == 13
    assert problem.message.startswith("TOML syntax error")


def test_toml_syntax_error_at_end_of_file(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + "x = [\n")
    assert problem.line == 12


def test_dotted_keys_in_root_are_located(conf_dir: Path) -> None:
    # A dotted root key after a table header belongs to that table in TOML: put it first.
    text = "limits.idle_timeout = 5\n" + BASE
    problem = only(conf_dir, text)
    assert problem.key == "limits.idle_timeout"
    assert problem.line == 1


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "absent.toml")
    assert "cannot read the file" in info.value.problems[0].message


def test_postgresql_store_keys(conf_dir: Path) -> None:
    (conf_dir / "dsn").write_text("postgresql://mailslot@db/mail\n")
    config = parse(
        conf_dir,
        BASE + '[store]\nbackend = "postgresql"\ndsn_file = "dsn"\npool_size = 4\n'
        'lease_seconds = 12\nstatement_cache_size = 0\n[server]\nnode_id = "pop-1"\n',
    )
    store = config.store
    assert (store.backend, store.dsn_file, store.pool_size) == ("postgresql", conf_dir / "dsn", 4)
    assert (store.lease_seconds, store.statement_cache_size) == (12.0, 0)
    assert config.server.node_id == "pop-1"
    defaults = parse(conf_dir, BASE)
    assert (defaults.store.backend, defaults.store.lease_seconds) == ("maildir", 30.0)
    assert defaults.server.node_id is None


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('backend = "mysql"', "store.backend", '"maildir", "postgresql"'),
        ('dsn = "postgresql://a/b"\ndsn_file = "dsn"', "store.dsn_file", "not both"),
        ('backend = "postgresql"\ndsn_file = "missing"', "store.dsn_file", "does not exist"),
        ("pool_size = 0", "store.pool_size", "1 or more"),
        ("lease_seconds = 0.5", "store.lease_seconds", "at least 1"),
        ("statement_cache_size = -1", "store.statement_cache_size", "behind PgBouncer"),
    ],
)
def test_postgresql_store_key_problems(conf_dir: Path, text: str, key: str, words: str) -> None:
    (conf_dir / "dsn").write_text("postgresql://mailslot@db/mail\n")
    problem = only(conf_dir, BASE + f"[store]\n{text}\n")
    assert problem.key == key
    assert words in problem.message


def test_auth_backend_postgresql_needs_no_passwd_file(conf_dir: Path) -> None:
    text = BASE.replace('passwd_file = "users"', 'backend = "postgresql"')
    config = parse(conf_dir, text)
    assert (config.auth.backend, config.auth.passwd_file) == ("postgresql", None)
    problem = only(conf_dir, BASE.replace('passwd_file = "users"', ""))
    assert problem.key == "auth.passwd_file"


def test_proxy_trusted_networks_are_networks_and_need_proxy_protocol(conf_dir: Path) -> None:
    base = '[auth]\npasswd_file = "users"\nallow_plaintext_without_tls = true\n'
    base += '[[listener]]\naddress = "127.0.0.1"\nport = 110\ntls = "none"\n'
    good = parse(
        conf_dir, base + 'proxy_protocol = true\nproxy_trusted_networks = ["10.0.0.0/8", "::1"]\n'
    )
    assert good.listeners[0].proxy_trusted_networks == ("10.0.0.0/8", "::1")
    bad = only(conf_dir, base + 'proxy_protocol = true\nproxy_trusted_networks = ["10.0.0/33"]\n')
    assert bad.key == "listener[0].proxy_trusted_networks"
    assert "is not a network" in bad.message
    unused = only(conf_dir, base + 'proxy_trusted_networks = ["10.0.0.0/8"]\n')
    assert "only means something with proxy_protocol" in unused.message


def test_client_workarounds_are_dovecots_names(conf_dir: Path) -> None:
    both = '[store]\nclient_workarounds = ["outlook-no-nuls", "oe-ns-eoh"]\n'
    config = parse(conf_dir, BASE + both)
    assert config.store.client_workarounds == ("outlook-no-nuls", "oe-ns-eoh")
    found = problems(conf_dir, BASE + '[store]\nclient_workarounds = ["outlook-no-nul"]\n')
    assert [p.key for p in found] == ["store.client_workarounds"]
    assert '"outlook-no-nul"' in found[0].message and '"oe-ns-eoh"' in found[0].message


def test_lock_session_false_needs_more_sessions_and_maildir(conf_dir: Path) -> None:
    text = BASE + "[store]\nlock_session = false\n"
    assert [p.key for p in problems(conf_dir, text)] == ["store.lock_session"]
    config = parse(conf_dir, text + "[limits]\nmax_sessions_per_user = 3\n")
    assert config.store.lock_session is False
    database = text + 'backend = "postgresql"\ndsn = "postgresql://x/y"\n'
    database += "[limits]\nmax_sessions_per_user = 3\n"
    assert [p.key for p in problems(conf_dir, database)] == ["store.lock_session"]


def test_log_format_and_logout_format(conf_dir: Path) -> None:
    config = parse(conf_dir, BASE + '[log]\nformat = "json"\nlogout_format = "%{retr_count}/%b"\n')
    assert (config.log.format, config.log.logout_format) == ("json", "%{retr_count}/%b")
    assert parse(conf_dir, BASE).log.logout_format == "top=%t/%p, retr=%r/%b, del=%d/%m, size=%s"
    problem = only(conf_dir, BASE + '[log]\nformat = "logfmt"\n')
    assert problem.key == "log.format"
    assert '"text" or "json"' in problem.message
    problem = only(conf_dir, BASE + '[log]\nlogout_format = "retr=%r %x"\n')
    assert problem.key == "log.logout_format"
    assert "%x" in problem.message
    problem = only(conf_dir, BASE + '[log]\nlogout_format = "%{retr}"\n')
    assert problem.key == "log.logout_format"


# -- [admin] ---------------------------------------------------------------------------------


def test_admin_socket_defaults_to_unset_and_is_relative_to_the_file(conf_dir: Path) -> None:
    assert parse(conf_dir, BASE).admin.socket is None
    config = parse(conf_dir, BASE + '[admin]\nsocket = "admin.sock"\n')
    assert config.admin.socket == conf_dir / "admin.sock"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"."', "must name a socket file, not the directory"),
        ("5", "must be"),
        ('""', "must be"),
    ],
)
def test_admin_socket_problems_name_the_key(conf_dir: Path, value: str, message: str) -> None:
    problem = only(conf_dir, BASE + f"[admin]\nsocket = {value}\n")
    assert problem.key == "admin.socket"
    assert message in problem.message
    assert problem.line == BASE.count("\n") + 2


def test_admin_unknown_key_is_named(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + '[admin]\nsockt = "a.sock"\n')
    assert problem.key == "admin.sockt"
    assert "socket" in problem.message


def test_admin_group_must_exist(conf_dir: Path) -> None:
    problem = only(conf_dir, BASE + '[admin]\ngroup = "no-such-group-here"\n')
    assert problem.key == "admin.group"
    assert "no group" in problem.message
    assert parse(conf_dir, BASE + '[admin]\ngroup = "root"\n').admin.group == "root"


@pytest.mark.parametrize("value", ["0", "0.05", "61"])
def test_cluster_refresh_is_bounded(conf_dir: Path, value: str) -> None:
    problem = only(conf_dir, BASE + f"[limits]\ncluster_refresh = {value}\n")
    assert problem.key == "limits.cluster_refresh"
    assert "0.1 to 60 seconds" in problem.message
    assert parse(conf_dir, BASE + "[limits]\ncluster_refresh = 0.5\n").limits.cluster_refresh == 0.5
