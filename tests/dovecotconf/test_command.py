"""``mailslot import-dovecot``: the file, the report on stderr, exit statuses (docs/cli.md)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from tests.support.tls import TlsFiles

from mailslot.cli import main

CONF = """\
protocols = pop3
listen = 127.0.0.1
ssl_cert = </etc/ssl/mail/chain.pem
ssl_key = </etc/ssl/mail/key.pem
login_greeting = Welcome
mail_location = maildir:/var/vmail/%d/%n/Maildir
passdb {
  driver = passwd-file
  args = /etc/mail/%d/passwd
}
protocol imap {
  imap_idle_notify_interval = 1 min
}
"""


def run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str, text: str = CONF
) -> tuple[int, str, Path]:
    source = tmp_path / "dovecot.conf"
    source.write_text(text)
    output = tmp_path / "mailslot.toml"
    code = main(
        ["import-dovecot", "--from", str(source), "--output", str(output), "--no-doveconf", *extra]
    )
    return code, capsys.readouterr().err, output


def test_writes_the_file_and_lists_what_it_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, output = run(tmp_path, capsys)
    assert code == 0
    text = output.read_text()
    assert 'passwd_file = "/etc/mail/{domain}/passwd"' in text
    assert 'maildir = "/var/vmail/{domain}/{localpart}/Maildir"' in text
    reported = [line.removeprefix("not carried over: ") for line in err.splitlines()]
    commented = [line.removeprefix("#   ") for line in text.splitlines()]
    for item in ("login_greeting", "protocol imap { }"):
        line = next(line for line in reported if line.startswith(item))
        assert line in commented  # the same sentence in both places
        assert f"{item} ({tmp_path}/dovecot.conf:" in line  # with where it was set
    assert f"check-config --config {output}" in err
    assert stat.S_IMODE(output.stat().st_mode) & ~0o640 == 0  # at most 0640, less by umask


def test_an_existing_output_is_kept_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mailslot.toml").write_text("# mine\n")
    code, err, output = run(tmp_path, capsys)
    assert code == 73
    assert "--force" in err
    assert output.read_text() == "# mine\n"
    code, _, _ = run(tmp_path, capsys, "--force")
    assert code == 0
    assert "protocol imap" in output.read_text()


def test_a_password_in_the_dsn_makes_the_file_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sql.ext").write_text(
        "driver = mysql\nconnect = host=db dbname=mail user=dc password=hush\n"
        "password_query = SELECT password FROM users WHERE userid = '%u'\n"
    )
    text = "passdb {\n  driver = sql\n  args = sql.ext\n}\n"
    code, err, output = run(tmp_path, capsys, text=text)
    assert code == 0
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert "hush" not in err  # the secret is in the file only


def test_an_unreadable_configuration_is_65(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err, output = run(tmp_path, capsys, text="service pop3-login {\n")
    assert code == 65
    assert "is not closed" in err
    assert not output.exists()


def test_doveconf_errors_are_65(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.programs import find_program

    if find_program("doveconf") is None:
        pytest.skip("doveconf is not installed")
    source = tmp_path / "dovecot.conf"
    source.write_text("no_such_dovecot_setting = 1\n")
    code = main(["import-dovecot", "--from", str(source), "--output", str(tmp_path / "o")])
    assert code == 65
    assert "doveconf" in capsys.readouterr().err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["import-dovecot", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "mailslot import-dovecot --from /etc/dovecot/dovecot.conf" in out


def test_an_sql_site_passes_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tls_files: TlsFiles
) -> None:
    (tmp_path / "dovecot-sql.conf.ext").write_text(
        "driver = pgsql\n"
        "connect = host=127.0.0.1 dbname=mail user=dovecot\n"
        "default_pass_scheme = SHA512-CRYPT\n"
        "password_query = \\\n"
        "  SELECT userid AS user, password FROM users WHERE userid = '%u'\n"
    )
    text = (
        "listen = 127.0.0.1\n"
        f"ssl_cert = <{tls_files.certificate}\n"
        f"ssl_key = <{tls_files.private_key}\n"
        "mail_uid = nobody\n"
        "mail_location = maildir:/var/vmail/%d/%n\n"
        "passdb {\n  driver = sql\n  args = dovecot-sql.conf.ext\n}\n"
    )
    code, _, output = run(tmp_path, capsys, text=text)
    assert code == 0
    assert 'password_query = "SELECT userid AS user' in output.read_text()
    assert main(["check-config", "--config", str(output)]) == 0
    assert capsys.readouterr().out.startswith("OK")
