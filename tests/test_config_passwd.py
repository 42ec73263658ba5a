"""[auth] username_format, legacy_schemes and a per-domain passwd_file: loaded and checked."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mailslot.config import ConfigError, ConfigProblem, loads

BASE = """\
[[listener]]
address = "127.0.0.1"
port = 1995
tls = "implicit"

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[auth]
"""


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    for name in ("cert.pem", "key.pem", "users"):
        (tmp_path / name).write_text("placeholder\n")
    return tmp_path


def problems(conf_dir: Path, auth: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        loads(BASE + textwrap.dedent(auth), conf_dir / "mailslot.toml")
    return info.value.problems


def test_defaults_are_dovecots(conf_dir: Path) -> None:
    config = loads(BASE + 'passwd_file = "users"\n', conf_dir / "mailslot.toml")
    assert config.auth.username_format == "%Lu"
    assert config.auth.legacy_schemes == ()


def test_settings_load(conf_dir: Path) -> None:
    (conf_dir / "domains").mkdir()
    text = BASE + textwrap.dedent(
        """\
        passwd_file = "domains/{domain}/passwd"
        username_format = "%n@%Ld"
        legacy_schemes = ["MD5-CRYPT", "md5", "CRYPT"]
        """
    )
    config = loads(text, conf_dir / "mailslot.toml")
    assert config.auth.passwd_file == conf_dir / "domains" / "{domain}" / "passwd"
    assert config.auth.legacy_schemes == ("MD5-CRYPT", "md5", "CRYPT")


@pytest.mark.parametrize(
    ("setting", "key", "says"),
    [
        ('username_format = "%x"', "auth.username_format", "%x is not a variable"),
        ('username_format = "fixed"', "auth.username_format", "names no part"),
        ('legacy_schemes = ["SHA"]', "auth.legacy_schemes", '"SHA" is not a legacy scheme'),
        ('passwd_file = "d/{user}/passwd"', "auth.passwd_file", "only the {domain} placeholder"),
        ('passwd_file = "nowhere/{domain}/passwd"', "auth.passwd_file", "does not exist"),
    ],
)
def test_problems_name_the_key(conf_dir: Path, setting: str, key: str, says: str) -> None:
    if "passwd_file" not in setting:
        setting = 'passwd_file = "users"\n' + setting
    found = problems(conf_dir, setting + "\n")
    assert [p.key for p in found] == [key]
    assert says in found[0].message
