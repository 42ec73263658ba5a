"""The passwd-file as Dovecot reads it: extra fields, legacy schemes, names, per-domain files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from passlib.hash import des_crypt, md5_crypt

from mailslot.auth import schemes
from mailslot.auth.base import AuthenticationFailed, TemporaryAuthFailure
from mailslot.auth.passwdfile import DomainPasswdFiles, PasswdFileAuthenticator, domain_of

from .conftest import run

MD5 = md5_crypt.hash("secret")
DES = des_crypt.hash("secret")


class FakeTime:
    """A clock that only sleeps move: the floor's waits are recorded, never slept."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# -- legacy schemes


@pytest.mark.parametrize(
    ("stored", "scheme"),
    [
        ("{MD5-CRYPT}" + MD5, "MD5-CRYPT"),
        ("{MD5}" + MD5, "MD5-CRYPT"),
        (MD5, "MD5-CRYPT"),  # a bare crypt(3) string, Dovecot's default CRYPT scheme
        ("{CRYPT}" + DES, "CRYPT"),
        (DES, "CRYPT"),
        ("{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69", "PLAIN-MD5"),
        ("{LDAP-MD5}Xr4ilOzQ4PCOq3aQ0qbuaQ==", "LDAP-MD5"),
    ],
)
def test_legacy_schemes_verify_only_when_listed(stored: str, scheme: str) -> None:
    assert schemes.scheme_name(stored) == scheme
    assert schemes.identify(stored) is None
    assert not schemes.verify("secret", stored)
    assert schemes.identify(stored, legacy={scheme}) == scheme
    assert schemes.verify("secret", stored, legacy={scheme})
    assert not schemes.verify("wrong", stored, legacy={scheme})
    assert not schemes.verify("secret", stored, legacy=LEGACY_OTHER[scheme])


LEGACY_OTHER = {s: schemes.LEGACY_SCHEMES - {s} for s in schemes.LEGACY_SCHEMES}


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("md5", "MD5-CRYPT"),
        ("MD5-crypt", "MD5-CRYPT"),
        ("des-crypt", "CRYPT"),
        ("SHA", None),
        ("PLAIN", None),
    ],
)
def test_canonical_legacy_names(name: str, canonical: str | None) -> None:
    assert schemes.canonical_legacy(name) == canonical


def test_unlisted_legacy_user_fails_like_a_wrong_password_and_is_logged_per_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "passwd", f"old:{{MD5-CRYPT}}{MD5}", "new:{PLAIN}secret")
    time = FakeTime()
    auth = PasswdFileAuthenticator(path, failure_floor=3.0, clock=time.clock, sleep=time.sleep)
    caplog.set_level(logging.WARNING, "mailslot.auth.passwdfile")
    auth.load()
    load_lines = [r.getMessage() for r in caplog.records]
    assert any(
        "line 1: MD5-CRYPT passwords are refused unless [auth] legacy_schemes lists MD5-CRYPT"
        in line
        for line in load_lines
    )
    caplog.clear()
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            run(auth.authenticate("old", "secret"))
    # The floor held (as for any failure) and each login said why.
    assert time.slept == [3.0, 3.0]
    refused = [r.getMessage() for r in caplog.records]
    assert (
        refused
        == [
            "login refused: user=old has a MD5-CRYPT password, which [auth] legacy_schemes"
            " does not list"
        ]
        * 2
    )
    assert "secret" not in caplog.text


def test_listed_legacy_user_logs_in_and_is_marked_for_rehash(tmp_path: Path) -> None:
    path = write(tmp_path / "passwd", f"old:{MD5}", "new:{PLAIN}secret")
    auth = PasswdFileAuthenticator(path, legacy={"MD5-CRYPT"})
    assert run(auth.authenticate("old", "secret")).legacy_scheme == "MD5-CRYPT"
    assert run(auth.authenticate("new", "secret")).legacy_scheme is None
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("old", "wrong"))


# -- extra fields at load and login


def test_problems_are_logged_once_per_read_with_a_count_not_per_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path / "passwd",
        "a:{PLAIN}secret::::::proxy",
        "b:{PLAIN}secret::::::proxy userdb_acl=x",
        "c:{PLAIN}secret::::::nologin",
    )
    auth = PasswdFileAuthenticator(path)
    caplog.set_level(logging.WARNING, "mailslot.auth.passwdfile")
    auth.load()
    for _ in range(3):
        run(auth.authenticate("a", "secret"))
    messages = [r.getMessage() for r in caplog.records if "plaintext" not in r.getMessage()]
    assert messages == [
        f"passwd-file {path} 2 lines, first line 1: passdb field proxy is not supported by"
        " mailslot: the user is refused",
        f"passwd-file {path} line 2: userdb field userdb_acl is not supported by mailslot: ignored",
    ]
    assert auth.problems == messages


def test_user_carries_its_fields_and_home(tmp_path: Path) -> None:
    path = write(
        tmp_path / "passwd",
        "a:{PLAIN}secret:::: /home/ignored ::nologin reason=Moved userdb_home=/srv/a",
    )
    user = run(PasswdFileAuthenticator(path).authenticate("a", "secret"))
    assert user.home == "/srv/a"
    assert user.extra is not None and user.extra.nologin and user.extra.reason == "Moved"


def test_a_restricted_users_success_waits_for_the_floor_an_open_users_does_not(
    tmp_path: Path,
) -> None:
    """A refusal after a right password (allow_nets) must take as long as a wrong password."""
    path = write(
        tmp_path / "passwd",
        "nets:{PLAIN}secret::::::allow_nets=10.0.0.0/8",
        "open:{PLAIN}secret",
    )
    time = FakeTime()
    auth = PasswdFileAuthenticator(path, failure_floor=2.0, clock=time.clock, sleep=time.sleep)
    run(auth.authenticate("open", "secret"))
    assert time.slept == []
    run(auth.authenticate("nets", "secret"))
    assert time.slept == [2.0]


def test_names_username_format_never_produces_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "passwd", "MiXed:{PLAIN}s", "lower:{PLAIN}s")
    caplog.set_level(logging.WARNING, "mailslot.auth.passwdfile")
    PasswdFileAuthenticator(path, username_format="%Lu").load()
    assert "line 1: user name is not as [auth] username_format (%Lu) makes" in caplog.text
    assert "line 2" not in caplog.text


def test_userdb_mail_must_name_the_configured_maildir(tmp_path: Path) -> None:
    path = write(
        tmp_path / "passwd",
        "same:{PLAIN}s:::::: userdb_mail=maildir:~/Maildir",
        "other:{PLAIN}s:::::: userdb_mail=maildir:/elsewhere/%u",
    )
    auth = PasswdFileAuthenticator(path, maildir="{home}/Maildir")
    auth.load()
    same = run(auth.lookup("same"))
    other = run(auth.lookup("other"))
    assert same is not None and same.extra is not None and not same.extra.mail_unsupported
    assert other is not None and other.extra is not None and other.extra.mail_unsupported
    assert any("userdb_mail names another place" in p for p in auth.problems)


def test_uid_gid_other_than_ours_are_reported_unless_root(tmp_path: Path) -> None:
    uid = os.geteuid() + 4242
    path = write(tmp_path / "passwd", f"a:{{PLAIN}}s:{uid}:{uid}::::")
    auth = PasswdFileAuthenticator(path)
    auth.load()
    user = run(auth.lookup("a"))
    assert user is not None and user.extra is not None and user.extra.owner == (uid, uid)
    if os.geteuid() == 0:
        assert auth.problems == []  # root gives the files these ids (store.base.Owner)
    else:
        assert len(auth.problems) == 1 and "uid/gid differ" in auth.problems[0]


# -- per-domain files


@pytest.mark.parametrize(
    ("name", "domain"),
    [
        ("a@example.org", "example.org"),
        ("a@b@xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a", None),
        ("a@", None),
        ("a@..", None),
        ("a@.example.org", None),
        ("a@example..org", None),
        ("a@-x.org", None),
        ("a@x/../y", None),
        ("a@" + "x" * 64 + ".org", None),
    ],
)
def test_domain_of(name: str, domain: str | None) -> None:
    assert domain_of(name) == domain


def domains(tmp_path: Path, time: FakeTime | None = None) -> DomainPasswdFiles:
    template = str(tmp_path / "mail" / "{domain}" / "passwd")
    clock = {} if time is None else {"clock": time.clock, "sleep": time.sleep}

    def make(path: Path) -> PasswdFileAuthenticator:
        return PasswdFileAuthenticator(path, **clock)  # type: ignore[arg-type]

    return DomainPasswdFiles(template, make, failure_floor=1.5, **clock)  # type: ignore[arg-type]


def test_each_domain_has_its_own_file(tmp_path: Path) -> None:
    for domain, secret in (("one.example", "s1"), ("two.example", "s2")):
        (tmp_path / "mail" / domain).mkdir(parents=True)
        write(tmp_path / "mail" / domain / "passwd", f"a@{domain}:{{PLAIN}}{secret}")
    auth = domains(tmp_path)
    assert run(auth.authenticate("a@one.example", "s1")).name == "a@one.example"
    assert run(auth.authenticate("a@two.example", "s2")).name == "a@two.example"
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("a@one.example", "s2"))
    assert run(auth.lookup("a@two.example")) is not None
    assert run(auth.lookup("a@three.example")) is None


@pytest.mark.parametrize("name", ["a", "a@missing.example", "a@..", "a@x/../../etc", "../a@x"])
def test_unknown_or_invalid_domains_fail_like_a_wrong_password(tmp_path: Path, name: str) -> None:
    (tmp_path / "mail").mkdir()
    time = FakeTime()
    auth = domains(tmp_path, time)
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate(name, "x"))
    assert time.slept and time.slept[0] >= 1.5  # the floor, as a known domain's failure


def test_a_symlinked_domain_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(elsewhere / "passwd", "a@evil.example:{PLAIN}s")
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "evil.example").symlink_to(elsewhere)
    auth = domains(tmp_path)
    caplog.set_level(logging.WARNING, "mailslot.auth.passwdfile")
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            run(auth.authenticate("a@evil.example", "s"))
    assert caplog.text.count("is a symlink, which is not followed") == 1


def test_an_unreadable_domain_file_is_a_temporary_failure(tmp_path: Path) -> None:
    (tmp_path / "mail" / "d.example" / "passwd").mkdir(parents=True)  # a directory: unreadable
    with pytest.raises(TemporaryAuthFailure):
        run(domains(tmp_path).authenticate("a@d.example", "s"))
