"""``[tls] reload_check_interval`` and ``[[tls.certificates]]`` in the configuration file:
validated with the key and line of each problem, like every other setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailslot.config import CertificateConfig, ConfigError, loads

BASE = """\
[[listener]]
port = 995
tls = "implicit"

[auth]
passwd_file = "users"

[tls]
certificate = "default.pem"
private_key = "default.key"
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text, Path("/etc/mailslot/mailslot.toml"), check_files=False)
    return [p.format(Path("m.toml")) for p in info.value.problems]


def test_certificate_entries_are_read_in_order() -> None:
    config = loads(
        BASE
        + "reload_check_interval = 2.5\n"
        + '[[tls.certificates]]\ncertificate = "a.pem"\nprivate_key = "a.key"\n'
        + '[[tls.certificates]]\ncertificate = "/b.pem"\nprivate_key = "/b.key"\n',
        Path("/etc/mailslot/mailslot.toml"),
        check_files=False,
    )
    assert config.tls.reload_check_interval == 2.5
    assert config.tls.certificates == (
        CertificateConfig(Path("/etc/mailslot/a.pem"), Path("/etc/mailslot/a.key")),
        CertificateConfig(Path("/b.pem"), Path("/b.key")),
    )


def test_an_entry_needs_both_files_and_no_unknown_key() -> None:
    problems = _problems(
        BASE
        + '[[tls.certificates]]\ncertificate = "a.pem"\n'
        + '[[tls.certificates]]\ncertificate = "b.pem"\nprivate_key = "b.key"\nkey = "x"\n'
    )
    assert problems == [
        "m.toml:11: tls.certificates[0]: needs private_key (the key file, PEM)",
        "m.toml:16: tls.certificates[1].key: unknown key in [[tls.certificates]]; "
        "allowed keys are certificate, private_key",
    ]


def test_entries_need_the_default_certificate() -> None:
    text = BASE.replace('certificate = "default.pem"\nprivate_key = "default.key"\n', "")
    problems = _problems(
        text + '[[tls.certificates]]\ncertificate = "a.pem"\nprivate_key = "a.key"\n'
    )
    assert any(
        "tls.certificates: needs [tls] certificate and private_key as well" in p for p in problems
    ), problems


def test_certificates_must_be_an_array_of_tables() -> None:
    problems = _problems(BASE + 'certificates = "a.pem"\n')
    assert problems == [
        "m.toml:11: tls.certificates: must be an array of tables: write [[tls.certificates]] "
        "with certificate and private_key, not a string ('a.pem')"
    ]


def test_a_negative_reload_check_interval_is_refused() -> None:
    assert _problems(BASE + "reload_check_interval = -1\n") == [
        "m.toml:11: tls.reload_check_interval: must be 0 (no automatic reload) or more "
        "seconds, not -1"
    ]


def test_an_entry_file_must_exist(tmp_path: Path) -> None:
    for name in ("users", "default.pem", "default.key", "a.pem"):
        (tmp_path / name).write_text("")
    text = BASE + '[[tls.certificates]]\ncertificate = "a.pem"\nprivate_key = "a.key"\n'
    with pytest.raises(ConfigError) as info:
        loads(text, tmp_path / "mailslot.toml")
    (problem,) = info.value.problems
    assert problem.key == "tls.certificates[0].private_key"
    assert problem.line == 13
    assert f"{tmp_path}/a.key does not exist" in problem.message
