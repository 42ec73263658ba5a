"""``[metrics]``: off by default; the address, the port and a clash with a listener are checked."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mailslot.config import Config, ConfigError, ConfigProblem, loads

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


def parse(conf_dir: Path, text: str) -> Config:
    return loads(textwrap.dedent(text), conf_dir / "mailslot.toml")


def only(conf_dir: Path, text: str) -> ConfigProblem:
    with pytest.raises(ConfigError) as info:
        parse(conf_dir, text)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


def test_off_by_default(conf_dir: Path) -> None:
    assert parse(conf_dir, BASE).metrics.port is None


def test_address_and_port_load(conf_dir: Path) -> None:
    metrics = parse(conf_dir, BASE + '[metrics]\naddress = "::1"\nport = 9154\n').metrics
    assert (metrics.address, metrics.port) == ("::1", 9154)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("port = 0\n", "metrics.port", "between 1 and 65535"),
        ("port = 70000\n", "metrics.port", "between 1 and 65535"),
        ('port = "9154"\n', "metrics.port", "must be"),
        ('address = "example.org"\nport = 9154\n', "metrics.address", "not an IPv4 or IPv6"),
        ("port = 1995\n", "metrics.port", "already used by listener[0]"),
        ("path = 3\n", "metrics.path", "unknown key in [metrics]"),
    ],
)
def test_bad_values_are_reported_with_their_key(
    conf_dir: Path, text: str, key: str, words: str
) -> None:
    problem = only(conf_dir, BASE + "[metrics]\n" + text)
    assert problem.key == key
    assert words in problem.message
    assert problem.line is not None
