"""Each Dovecot setting into its mailslot key, and the list of what could not come along.

Every rendered result is also loaded by mailslot's own config loader, so a mapping that
writes a key or value mailslot refuses fails here.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.support.programs import find_program

from mailslot.config import ConfigError, loads
from mailslot.dovecotconf.defaults import DEFAULTS
from mailslot.dovecotconf.mapping import Imported, convert, seconds, template
from mailslot.dovecotconf.parser import DovecotConfigError, parse_text
from mailslot.dovecotconf.render import render


def imported(text: str, base: Path | None = None) -> Imported:
    result = convert(parse_text(text, "dovecot.conf", base), base=base)
    # mailslot accepts every key and value written; these fragments may lack a file
    # (certificate, passwd-file) a whole configuration names.
    try:
        loads(render(result, "test"), check_files=False)
    except ConfigError as error:
        wrong = [p for p in error.problems if not p.message.startswith("is required because")]
        assert not wrong, error
    return result


def skipped(result: Imported) -> dict[str, str]:
    return {item.key: item.reason for item in result.skipped}


def table(result: Imported, name: str) -> dict[str, Any]:
    return result.tables.get(name, {})


def test_default_listeners_are_dovecots_on_every_address() -> None:
    result = imported("protocols = pop3\n")
    assert result.listeners == [
        {"address": "0.0.0.0", "port": 110, "tls": "starttls"},
        {"address": "::", "port": 110, "tls": "starttls"},
        {"address": "0.0.0.0", "port": 995, "tls": "implicit"},
        {"address": "::", "port": 995, "tls": "implicit"},
    ]
    assert not result.notes or all("protocols" not in note for note in result.notes)


def test_listeners_from_service_pop3_login() -> None:
    result = imported(
        "protocols = imap pop3\n"
        "listen = 192.0.2.1\n"
        "haproxy_trusted_networks = 10.0.0.0/8\n"
        "service pop3-login {\n"
        "  inet_listener pop3 {\n    port = 0\n  }\n"
        "  inet_listener pop3s {\n    port = 1995\n    ssl = yes\n    haproxy = yes\n  }\n"
        "  inet_listener internal {\n    port = 1110\n    address = 127.0.0.1, ::1\n  }\n"
        "  process_min_avail = 4\n"
        "}\n"
    )
    assert result.listeners == [
        {
            "address": "192.0.2.1",
            "port": 1995,
            "tls": "implicit",
            "proxy_protocol": True,
            "proxy_trusted_networks": ["10.0.0.0/8"],
        },
        {"address": "127.0.0.1", "port": 1110, "tls": "starttls"},
        {"address": "::1", "port": 1110, "tls": "starttls"},
    ]
    assert "service pop3-login { process_min_avail }" in skipped(result)


def test_protocols_without_pop3_is_said() -> None:
    result = imported("protocols = imap\n")
    assert any("does not serve POP3" in note for note in result.notes)


def test_ssl_no_drops_pop3s_and_tls() -> None:
    result = imported("protocols = pop3\nssl = no\nlisten = 127.0.0.1\n")
    assert result.listeners == [{"address": "127.0.0.1", "port": 110, "tls": "none"}]
    assert "ssl = yes on it but ssl = no" in skipped(result)["inet_listener pop3s"]


def test_listen_names_are_reported() -> None:
    result = imported("listen = mail.example.org, 127.0.0.1\n")
    assert {lst["address"] for lst in result.listeners} == {"127.0.0.1"}
    assert "listen = mail.example.org" in skipped(result)


@pytest.mark.parametrize(
    ("settings", "allowed"),
    [
        ("", False),
        ("disable_plaintext_auth = no\n", True),
        ("disable_plaintext_auth = no\nssl = required\n", False),
        ("protocol pop3 {\n  disable_plaintext_auth = no\n}\n", True),
    ],
)
def test_plaintext_auth(settings: str, allowed: bool) -> None:
    result = imported("listen = 127.0.0.1\n" + settings)
    assert table(result, "auth")["allow_plaintext_without_tls"] is allowed


def test_a_top_level_value_pop3_overrides_is_not_reported() -> None:
    result = imported(
        "disable_plaintext_auth = yes\nprotocol pop3 {\n  disable_plaintext_auth = no\n}\n"
    )
    assert table(result, "auth")["allow_plaintext_without_tls"] is True
    assert "disable_plaintext_auth" not in skipped(result)


def test_a_bad_port_is_reported() -> None:
    result = imported(
        "listen = ::1\nservice pop3-login {\n  inet_listener pop3 {\n    port = pop\n  }\n}\n"
    )
    assert [lst["port"] for lst in result.listeners] == [995]
    assert "inet_listener pop3 { port = pop }" in skipped(result)


def test_certificates_profile_and_what_tls_cannot_take() -> None:
    result = imported(
        "ssl_cert = </etc/ssl/mail/fullchain.pem\n"
        "ssl_key = </etc/ssl/mail/key.pem\n"
        "ssl_min_protocol = TLSv1.3\n"
        "ssl_cipher_list = HIGH:!aNULL\n"
        "ssl_dh = </usr/share/dovecot/dh.pem\n"
        "local_name mail.example.org {\n"
        "  ssl_cert = </etc/ssl/other/chain.pem\n  ssl_key = </etc/ssl/other/key.pem\n"
        "}\n"
        "local 192.0.2.7 {\n  ssl_cert = </etc/ssl/x.pem\n}\n"
    )
    assert table(result, "tls") == {
        "certificate": "/etc/ssl/mail/fullchain.pem",
        "private_key": "/etc/ssl/mail/key.pem",
        "profile": "modern",
    }
    assert result.certificates == [
        {"certificate": "/etc/ssl/other/chain.pem", "private_key": "/etc/ssl/other/key.pem"}
    ]
    reasons = skipped(result)
    assert "Mozilla" in reasons["ssl_cipher_list"]
    assert "ECDHE" in reasons["ssl_dh"]
    assert "per-address" in reasons["local 192.0.2.7 { }"]


def test_old_tls_and_inline_pem_are_reported() -> None:
    result = imported("ssl_min_protocol = TLSv1\nssl_cert = -----BEGIN CERTIFICATE-----\n")
    reasons = skipped(result)
    assert "TLS 1.2" in reasons["ssl_min_protocol = TLSv1"]
    assert "<file" in reasons["ssl_cert"]
    assert "profile" not in table(result, "tls")


def test_passwd_file_with_domain_scheme_and_username_format() -> None:
    result = imported(
        "auth_username_format = %Lu\n"
        "passdb {\n  driver = passwd-file\n"
        "  args = scheme=PLAIN username_format=%n /etc/auth/%d/passwd\n}\n"
        "userdb {\n  driver = passwd-file\n  args = username_format=%n /etc/auth/%d/passwd\n}\n"
    )
    auth = table(result, "auth")
    assert auth["backend"] == "passwd-file"
    assert auth["passwd_file"] == "/etc/auth/{domain}/passwd"
    assert auth["username_format"] == "%Lu"
    assert "{PLAIN}" in skipped(result)["passdb { args scheme=PLAIN }"]
    assert "passdb { args username_format=%n }" in skipped(result)
    assert not any(key.startswith("userdb") for key in skipped(result))


def test_passwd_file_paths_mailslot_cannot_expand() -> None:
    result = imported("passdb {\n  driver = passwd-file\n  args = /etc/users/%u\n}\n")
    assert "passdb { args = /etc/users/%u }" in skipped(result)
    assert "passwd_file" not in table(result, "auth")


def test_default_scheme_matters_only_for_bare_passwords(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:{PLAIN}secret:::::\n")
    text = f"passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {users}\n}}\n"
    assert "passdb { args scheme=PLAIN }" not in skipped(imported(text))
    users.write_text("alice:{PLAIN}secret:::::\nbob:bare:::::\n")
    assert "passdb { args scheme=PLAIN }" in skipped(imported(text))


def test_md5_crypt_becomes_a_legacy_scheme() -> None:
    result = imported("passdb {\n  driver = passwd-file\n  args = scheme=MD5-CRYPT /u\n}\n")
    assert table(result, "auth")["legacy_schemes"] == ["MD5-CRYPT"]


def test_sql_passdb_reads_its_file(tmp_path: Path) -> None:
    (tmp_path / "dovecot-sql.conf.ext").write_text(
        "driver = pgsql\n"
        "connect = host=db.example.org port=5433 dbname=mail user=dovecot password=s3cr/t\n"
        "default_pass_scheme = SHA512-CRYPT\n"
        "password_query = SELECT username AS user, password FROM users "
        "WHERE username = '%n' AND domain = '%d'\n"
        "user_query = SELECT home FROM users WHERE username = '%n'\n"
    )
    result = imported("passdb {\n  driver = sql\n  args = dovecot-sql.conf.ext\n}\n", base=tmp_path)
    assert table(result, "auth")["backend"] == "sql"
    assert table(result, "auth.sql") == {
        "driver": "postgresql",
        "dsn": "postgresql://dovecot:s3cr%2Ft@db.example.org:5433/mail",
        "password_query": "SELECT username AS user, password FROM users "
        "WHERE username = '%n' AND domain = '%d'",
        "default_pass_scheme": "SHA512-CRYPT",
    }
    assert result.secret  # the file gets mode 0600
    assert "dovecot-sql.conf.ext: user_query" in skipped(result)


def test_mysql_over_a_socket(tmp_path: Path) -> None:
    conf = tmp_path / "sql.ext"
    conf.write_text(
        "driver = mysql\nconnect = host=/run/mysqld/mysqld.sock dbname=mail user=dc\n"
        "password_query = SELECT password FROM users WHERE userid = '%u'\n"
    )
    result = imported(f"passdb {{\n  driver = sql\n  args = {conf}\n}}\n")
    assert (
        table(result, "auth.sql")["dsn"] == "mysql://dc@/mail?unix_socket=/run/mysqld/mysqld.sock"
    )
    assert not result.secret


def test_sqlite_is_reported(tmp_path: Path) -> None:
    conf = tmp_path / "sql.ext"
    conf.write_text("driver = sqlite\nconnect = /var/lib/users.db\n")
    result = imported(f"passdb {{\n  driver = sql\n  args = {conf}\n}}\n")
    assert any("PostgreSQL and MySQL" in reason for reason in skipped(result).values())
    assert "backend" not in table(result, "auth")


def test_other_passdbs_go_through_dovecots_auth_socket() -> None:
    result = imported(
        "base_dir = /var/run/dovecot/\n"
        "passdb {\n  driver = ldap\n  args = /etc/dovecot/dovecot-ldap.conf.ext\n}\n"
        "passdb {\n  driver = passwd-file\n  args = /etc/extra\n}\n"
        "passdb {\n  driver = passwd-file\n  args = /etc/masters\n  master = yes\n}\n"
    )
    assert table(result, "auth")["backend"] == "dovecot"
    assert table(result, "auth.dovecot") == {
        "socket": "/run/dovecot/auth-client",
        "service": "pop3",
    }
    assert any("ldap" in note for note in result.notes)
    reasons = skipped(result)
    assert "only the first passdb" in reasons["passdb { driver = passwd-file }"]
    assert "master passdb" in reasons["passdb { master = yes }"]


@pytest.mark.parametrize(
    ("location", "maildir"),
    [
        ("maildir:~/Maildir", "~/Maildir"),
        ("maildir:/var/vmail/%d/%n", "/var/vmail/{domain}/{localpart}"),
        ("maildir:/srv/mail/%u/Maildir:INDEX=/var/index/%u", "/srv/mail/{user}/Maildir"),
        ("maildir:%h/mail", "{home}/mail"),
        ("maildir:/var/vmail/%Ld/%Ln", "/var/vmail/{domain}/{localpart}"),  # names lowered
        ("maildir:/var/vmail/%{domain}/%{username}", "/var/vmail/{domain}/{localpart}"),
    ],
)
def test_mail_location(location: str, maildir: str) -> None:
    result = imported(f"mail_location = {location}\n")
    assert table(result, "store")["maildir"] == maildir


@pytest.mark.parametrize(
    "location", ["mbox:~/mail:INBOX=/var/mail/%u", "mdbox:~/mdbox", "maildir:/m/%Uu", ""]
)
def test_mail_locations_mailslot_cannot_serve(location: str) -> None:
    result = imported(f"mail_location = {location}\n")
    assert "maildir" not in table(result, "store")
    assert any(key.startswith("mail_location") for key in skipped(result))


def test_lowered_variables_need_lowered_names() -> None:
    result = imported("auth_username_format = %u\nmail_location = maildir:/m/%Ln\n")
    assert "maildir" not in table(result, "store")
    assert "%Ln has no mailslot equivalent" in skipped(result)["mail_location = maildir:/m/%Ln"]


def test_mail_location_options_are_listed() -> None:
    result = imported("mail_location = maildir:~/Maildir:INDEX=/idx/%u:CONTROL=/ctl/%u\n")
    assert table(result, "store")["maildir"] == "~/Maildir"
    reasons = skipped(result)
    assert "index files" in reasons["mail_location :INDEX=/idx/%u"]
    assert "UIDLs would differ" in reasons["mail_location :CONTROL=/ctl/%u"]


def test_dovecot_24_configurations_are_refused() -> None:
    with pytest.raises(DovecotConfigError, match=r"Dovecot 2\.4"):
        convert(parse_text("dovecot_config_version = 2.4.1\n"))


def test_static_userdb_gives_user_group_and_home() -> None:
    root = pwd.getpwuid(0).pw_name
    group = grp.getgrgid(0).gr_name
    result = imported(
        "mail_location = maildir:~/Maildir\n"
        "userdb {\n  driver = static\n  args = uid=0 gid=0 home=/var/vmail/%d/%n\n}\n"
    )
    assert table(result, "server") == {"user": root, "group": group}
    assert table(result, "store")["maildir"] == "/var/vmail/{domain}/{localpart}/Maildir"


def test_static_userdb_accounts_and_homes_mailslot_cannot_use() -> None:
    result = imported(
        "mail_location = maildir:~/Maildir\n"
        "userdb {\n  driver = static\n  args = uid=no-such-user-here home=/v/%Uu\n}\n"
    )
    reasons = skipped(result)
    assert reasons["userdb static { args uid=no-such-user-here }"] == "no such account"
    assert "%Uu" in reasons["userdb static { args home=/v/%Uu }"]
    assert table(result, "store")["maildir"] == "~/Maildir"
    assert any("home directory" in note for note in result.notes)  # no passdb gives one


def test_mail_uid_and_unknown_accounts() -> None:
    result = imported("mail_uid = 0\nmail_gid = no-such-group-here\nhostname = pop.example.org\n")
    assert table(result, "server") == {
        "user": pwd.getpwuid(0).pw_name,
        "hostname": "pop.example.org",
    }
    assert "no account" in skipped(result)["mail_gid"]
    assert "no account" in skipped(imported("mail_uid = 99999999999999999999\n"))["mail_uid"]


def test_one_uid_in_the_passwd_file_is_the_server_user(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:{PLAIN}a:0:0::/home/a::\nbob:{PLAIN}b:0:0::/home/b::\n")
    text = (
        f"passdb {{\n  driver = passwd-file\n  args = {users}\n}}\n"
        f"userdb {{\n  driver = passwd-file\n  args = {users}\n}}\n"
    )
    assert table(imported(text), "server")["user"] == pwd.getpwuid(0).pw_name
    users.write_text("alice:{PLAIN}a:0:0::/home/a::\nbob:{PLAIN}b:1:1::/home/b::\n")
    assert "user" not in table(imported(text), "server")


def test_pop3_settings_and_the_protocol_block() -> None:
    result = imported(
        "pop3_uidl_format = %u%v\n"
        "pop3_reuse_xuidl = yes\n"
        "pop3_deleted_flag = $POP3Deleted\n"
        "protocol pop3 {\n"
        "  pop3_no_flag_updates = yes\n"
        "  pop3_lock_session = yes\n"
        "  pop3_client_workarounds = outlook-no-nuls oe-ns-eoh\n"
        '  pop3_logout_format = "in=%i out=%o"\n'
        "  mail_max_userip_connections = 3\n"
        "}\n"
    )
    assert table(result, "store") == {
        "uidl_format": "%u%v",
        "reuse_xuidl": True,
        "deleted_flag": "$POP3Deleted",
        "flag_updates": False,
        "lock_session": True,
        "client_workarounds": ["outlook-no-nuls", "oe-ns-eoh"],
    }
    assert table(result, "log") == {"logout_format": "in=%i out=%o"}
    assert "one session per user" in skipped(result)["mail_max_userip_connections"]


def test_dovecot_defaults_are_carried_over() -> None:
    result = imported("")
    assert table(result, "store") == {
        "uidl_format": "%08Xu%08Xv",
        "flag_updates": True,
        "lock_session": False,
    }
    assert table(result, "limits") == {"max_sessions_per_user": 10}
    assert table(result, "auth")["username_format"] == "%Lu"
    assert table(result, "auth")["failure_delay"] == 2.0
    assert "log" not in result.tables  # the default logout format is mailslot's too


def test_unsupported_uidl_format_and_workaround() -> None:
    result = imported("pop3_uidl_format = %Z\npop3_client_workarounds = foo oe-ns-eoh\n")
    assert "uidl_format" not in table(result, "store")
    assert "pop3_uidl_format = %Z" in skipped(result)
    assert "pop3_client_workarounds foo" in skipped(result)


def test_auth_settings() -> None:
    result = imported(
        "auth_username_format = %n\nauth_failure_delay = 20 secs\n"
        "auth_mechanisms = plain login cram-md5\n"
    )
    auth = table(result, "auth")
    assert (auth["username_format"], auth["failure_delay"], auth["failure_delay_max"]) == (
        "%n",
        20.0,
        20.0,
    )
    assert "auth_mechanisms = login cram-md5" in skipped(result)


def test_everything_else_is_listed_with_a_reason() -> None:
    result = imported(
        "login_greeting = Hello\n"
        "some_future_setting = 1\n"
        "protocol imap {\n  mail_max_userip_connections = 20\n}\n"
        "service imap-login {\n}\n"  # empty: changes nothing, not listed
        "plugin {\n  quota = maildir\n}\n"
    )
    reasons = skipped(result)
    assert "greeting" in reasons["login_greeting"]
    assert reasons["some_future_setting"] == "no mailslot equivalent"
    assert "imap, which mailslot does not serve" in reasons["protocol imap { }"]
    assert "plugins" in reasons["plugin { }"]
    assert "service imap-login { }" not in reasons
    text = render(result, "dovecot.conf")
    assert "#   some_future_setting (dovecot.conf:2): no mailslot equivalent" in text


def test_helpers() -> None:
    assert seconds("2 secs") == 2.0
    assert seconds("500 ms") == 0.5
    assert seconds("1 min") == 60.0
    assert seconds("soon") is None
    assert template("/m/%d/%n/%%") == ("/m/{domain}/{localpart}/%", ["%%"])


def test_defaults_are_the_installed_dovecots() -> None:
    doveconf = find_program("doveconf")
    if doveconf is None:
        pytest.skip("doveconf is not installed")
    empty = Path(os.devnull)
    out = subprocess.run(
        [doveconf, "-c", str(empty), "-a"], capture_output=True, text=True, check=True
    ).stdout
    top = {}
    for line in out.splitlines():
        key, equals, value = line.partition(" = ")
        if equals and not line.startswith(" "):
            top[key] = value
    assert {key: top[key] for key in DEFAULTS} == DEFAULTS


def test_config_checks_the_agreed_keys_it_writes() -> None:
    """The issue-16 keys this branch adds to config.py: accepted, and checked by name."""
    base = '[[listener]]\ntls = "none"\n'
    with pytest.raises(ConfigError) as error:
        loads(
            base + '[auth]\nbackend = "sql"\n[auth.sql]\ndriver = "oracle"\n'
            '[store]\nclient_workarounds = ["oe-ns-eoh", "netscape-eoh"]\n',
            check_files=False,
        )
    keys = {problem.key for problem in error.value.problems}
    assert keys == {
        "auth.sql.driver",
        "auth.sql.password_query",
        "store.client_workarounds",
    }
    config = loads(
        base + '[auth]\nbackend = "dovecot"\n[auth.dovecot]\nsocket = "/run/x/auth-client"\n'
        '[log]\nformat = "json"\n',
        check_files=False,
    )
    assert str(config.auth.dovecot.socket) == "/run/x/auth-client"
    assert config.log.format == "json"
