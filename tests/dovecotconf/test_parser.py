"""dovecot.conf syntax: settings, comments, quoting, sections, includes, $variables, <file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailslot.dovecotconf.parser import DovecotConfigError, parse_file, parse_text


def test_settings_comments_and_quotes() -> None:
    root = parse_text(
        "# a comment\n"
        "protocols = pop3   # trailing comment\n"
        'login_greeting = "Mail # here \\"ready\\""\n'
        "listen = *, \\\n    ::\n"
        "protocols = pop3 imap\n"
    )
    assert root.get("protocols") == "pop3 imap"  # the last value wins, as in Dovecot
    assert root.get("login_greeting") == 'Mail # here "ready"'
    assert root.get("listen") == "*, ::"
    assert root.settings["protocols"].where == "<dovecot.conf>:6"


def test_nested_sections_merge_by_name_but_databases_repeat() -> None:
    root = parse_text(
        "service pop3-login {\n"
        "  inet_listener pop3s {\n    port = 995\n    ssl = yes\n  }\n"
        "}\n"
        "service pop3-login {\n  inet_listener pop3 {\n    port = 0\n  }\n}\n"
        "passdb {\n  driver = passwd-file\n}\n"
        "passdb {\n  driver = pam\n}\n"
        "local_name mail.example.org {\n  ssl_cert = </c.pem\n}\n"
    )
    services = list(root.find("service", "pop3-login"))
    assert len(services) == 1
    listeners = {inner.name: inner for inner in services[0].sections}
    assert listeners["pop3s"].settings["port"].value == "995"
    assert listeners["pop3"].get("port") == "0"
    assert [db.get("driver") for db in root.find("passdb")] == ["passwd-file", "pam"]
    assert next(root.find("local_name")).name == "mail.example.org"


def test_variables_expand_from_settings_so_far_and_environment() -> None:
    root = parse_text(
        "protocols = $protocols imap\n"
        "protocols = $protocols pop3\n"
        "mail_location = maildir:$ENV:MAILROOT/%u\n"
        'quoted = "$protocols"\n'
        "args = password=$6$salt$hash\n",
        environ={"MAILROOT": "/srv/mail"},
    )
    assert root.get("protocols").split() == ["imap", "pop3"]
    assert root.get("mail_location") == "maildir:/srv/mail/%u"
    assert root.get("quoted") == "$protocols"  # quoted values are literal
    assert root.get("args") == "password=$6$salt$hash"  # no such settings: kept


def test_file_values_keep_the_path_and_read_the_contents(tmp_path: Path) -> None:
    greeting = tmp_path / "greeting"
    greeting.write_text("Hello there\n")
    root = parse_text(f"ssl_cert = </etc/ssl/mail.pem\nlogin_greeting = <{greeting}\n")
    assert root.settings["ssl_cert"].file() == Path("/etc/ssl/mail.pem")
    assert root.settings["login_greeting"].text() == "Hello there"
    assert root.settings["ssl_cert"].value == "</etc/ssl/mail.pem"
    with pytest.raises(DovecotConfigError, match=r"cannot read /etc/ssl/mail\.pem"):
        root.settings["ssl_cert"].text()


def test_includes_are_relative_globbed_and_try_is_silent(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-a.conf").write_text("pop3_uidl_format = %f\n")
    (tmp_path / "conf.d" / "20-b.conf").write_text(
        "protocol pop3 {\n  pop3_lock_session = yes\n}\n"
    )
    (tmp_path / "dovecot.conf").write_text(
        "pop3_uidl_format = %u%v\n"
        "!include conf.d/*.conf\n"
        "!include_try /nonexistent/*.protocol\n"
        "!include_try missing.conf\n"
        "protocol pop3 {\n  !include local.ext\n}\n"
    )
    (tmp_path / "local.ext").write_text("pop3_no_flag_updates = yes\n")
    root = parse_file(tmp_path / "dovecot.conf")
    assert root.get("pop3_uidl_format") == "%f"
    pop3 = next(root.find("protocol", "pop3"))
    assert pop3.get("pop3_lock_session") == "yes"
    assert pop3.get("pop3_no_flag_updates") == "yes"  # an include inside a section
    assert root.settings["pop3_uidl_format"].where == f"{tmp_path}/conf.d/10-a.conf:1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("}\n", "without an open section"),
        ("protocol pop3 {\n", "is not closed"),
        ("what is this\n", "cannot parse"),
        ("!include /nonexistent/file.conf\n", "no such file"),
    ],
)
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(DovecotConfigError, match=message):
        parse_text(text, "x.conf", Path("/"))


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("!include a.conf\n")
    with pytest.raises(DovecotConfigError, match="nested too deep"):
        parse_file(tmp_path / "a.conf")


def test_debian_shipped_configuration_parses() -> None:
    shipped = Path("/etc/dovecot/dovecot.conf")
    if not shipped.exists():
        pytest.skip("Dovecot's shipped configuration (dovecot-core) is not installed")
    root = parse_file(shipped)
    assert "pop3" in root.get("protocols").split()  # from protocols.d/pop3d.protocol
    assert next(root.find("service", "pop3-login")).sections
