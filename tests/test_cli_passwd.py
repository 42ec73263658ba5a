"""check-config reads the passwd-file as the server does and prints what it would log."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from tests.test_cli import CONFIG, config_file  # noqa: F401 (a fixture)

from mailslot.cli import main


def test_check_config_warns_about_the_passwd_files_lines(
    config_file: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    (config_file.parent / "users").write_text(
        "alice:{PLAIN}s::::::proxy\n"
        "bob:{MD5-CRYPT}$1$Pdx6LWK0$S6yMRCnHID.YgLhJKlqax0\n"
        "Carol:{PLAIN}s\n"
    )
    assert main(["check-config", "--config", str(config_file)]) == 0
    err = capsys.readouterr().err
    users = config_file.parent / "users"
    assert (
        f"{config_file}:16: auth.passwd_file: warning: passwd-file {users} line 1: passdb"
        " field proxy is not supported by mailslot: the user is refused"
    ) in err
    assert "line 2: MD5-CRYPT passwords are refused unless [auth] legacy_schemes" in err
    assert "line 3: user name is not as [auth] username_format (%Lu) makes" in err
    assert "{PLAIN}s" not in err


def test_check_config_reads_every_per_domain_file(
    config_file: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    domains = config_file.parent / "domains"
    for domain in ("a.example", "b.example"):
        (domains / domain).mkdir(parents=True)
        (domains / domain / "passwd").write_text(f"x@{domain}:{{PLAIN}}s::::::host=h\n")
    config_file.write_text(
        CONFIG.replace('passwd_file = "users"', 'passwd_file = "domains/{domain}/passwd"')
    )
    assert main(["check-config", "--config", str(config_file)]) == 0
    err = capsys.readouterr().err
    for domain in ("a.example", "b.example"):
        assert f"{domains / domain / 'passwd'} line 1: passdb field host" in err


def test_user_commands_use_the_names_domain_file(
    config_file: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    domains = config_file.parent / "domains"
    (domains / "a.example").mkdir(parents=True)
    config_file.write_text(
        CONFIG.replace('passwd_file = "users"', 'passwd_file = "domains/{domain}/passwd"')
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["user", "add", "--config", str(config_file), "x@a.example"]) == 0
    assert (domains / "a.example" / "passwd").read_text().startswith("x@a.example:{ARGON2ID}")
    # No file named "{domain}" is ever made: without a domain, or for list, it is refused.
    for args in (["add", "x"], ["list"]):
        monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
        assert main(["user", args[0], "--config", str(config_file), *args[1:]]) == 64
    assert "give a user@domain name, or --passwd-file FILE" in capsys.readouterr().err
    assert not (domains / "{domain}").exists()
