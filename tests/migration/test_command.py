"""``mailslot migrate``'s refusals: each a line on stderr naming the problem and a sysexits(3)
status, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.server import free_port

from mailslot.cli import main

LISTENER = '[[listener]]\naddress = "127.0.0.1"\nport = 1110\ntls = "none"\n'
NEW = '[auth]\nbackend = "postgresql"\n[store]\nbackend = "postgresql"\n'


def write(path: Path, text: str) -> Path:
    path.write_text(LISTENER + text, encoding="utf-8")
    return path


@pytest.fixture
def old(tmp_path: Path) -> Path:
    (tmp_path / "users").write_text("alice:{PLAIN}secret\n")
    return write(
        tmp_path / "old.toml",
        f'[auth]\npasswd_file = "users"\n[store]\nmaildir = "{tmp_path}/{{user}}/Maildir"\n',
    )


def run(old: Path, new: Path, *extra: str) -> int:
    return main(["migrate", "--from-config", str(old), "--to-config", str(new), *extra])


def test_the_new_configuration_must_be_postgresql(
    tmp_path: Path, old: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(old, old) == 78
    assert '[store] backend is not "postgresql"' in capsys.readouterr().err


def test_the_old_configuration_must_be_maildir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILSLOT_DSN", raising=False)
    new = write(tmp_path / "new.toml", NEW)
    assert run(new, new) == 78
    assert '[store] backend is not "maildir"' in capsys.readouterr().err


def test_no_dsn_is_a_configuration_problem(
    tmp_path: Path, old: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILSLOT_DSN", raising=False)
    new = write(tmp_path / "new.toml", NEW)
    assert run(old, new) == 78
    assert "needs dsn, dsn_file or $MAILSLOT_DSN" in capsys.readouterr().err


def test_a_database_that_is_not_there_is_unavailable(
    tmp_path: Path, old: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/mail"
    new = write(
        tmp_path / "new.toml",
        NEW + f'dsn = "{dsn}"\n',
    )
    assert run(old, new) == 69
    err = capsys.readouterr().err
    assert err.startswith("mailslot: cannot use the database: ")
    assert "Traceback" not in err


def test_an_invalid_user_name_is_refused(
    tmp_path: Path, old: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = write(tmp_path / "new.toml", NEW + 'dsn = "postgresql://x/y"\n')
    assert run(old, new, "--user", "../etc") == 78
    assert "not a valid user name" in capsys.readouterr().err
