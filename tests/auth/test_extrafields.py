"""Dovecot passwd-file extra fields: each field read, and what happens to the others."""

from __future__ import annotations

import ipaddress
import os

import pytest

from mailslot.auth import extrafields
from mailslot.auth.extrafields import ExtraFields


def parse(extra: str, uid: str = "", gid: str = "", home: str = "") -> ExtraFields:
    return extrafields.parse(f"u:{{PLAIN}}x:{uid}:{gid}::{home}::{extra}".split(":"))


def test_a_line_without_extra_fields_has_none() -> None:
    assert parse("") == ExtraFields()
    assert not parse("").restricted


def test_nologin_with_reason_and_nodelay() -> None:
    found = parse("nologin reason=Moved nodelay")
    assert (found.nologin, found.reason, found.nodelay) == (True, "Moved", True)
    assert found.restricted and found.problems == ()


def test_reason_has_no_spaces_as_in_dovecot_and_no_control_characters() -> None:
    # Dovecot splits at spaces with no escaping: "Account\\ moved" is "Account\\".
    assert parse("nologin reason=Account\\ moved").reason == "Account\\"
    assert parse("nologin reason=a\x1bb").reason == "a?b"
    assert parse("nologin reason=" + "x" * 500).reason == "x" * 200


def test_allow_nets_and_allow_real_nets() -> None:
    found = parse("allow_nets=10.0.0.0/8,192.0.2.1,::1,local allow_real_nets=127.0.0.0/8")
    assert found.allow_nets == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.1/32"),
        ipaddress.ip_network("::1/128"),
        "local",
    )
    assert found.allow_real_nets == (ipaddress.ip_network("127.0.0.0/8"),)
    assert found.restricted and not found.refused_by


@pytest.mark.parametrize("value", ["", "10.0.0.0/33", "nonsense", "10.0.0.1,", ","])
def test_a_malformed_allow_nets_refuses_the_user(value: str) -> None:
    found = parse(f"allow_nets={value}" if value != "," else "allow_nets")
    if value == "10.0.0.1,":
        assert found.allow_nets == (ipaddress.ip_network("10.0.0.1/32"),)
        return
    assert found.allow_nets is None
    assert found.refused_by == ("allow_nets",)
    assert found.problems == (
        "passdb field allow_nets is not a list of networks: the user is refused",
    )


def test_unknown_passdb_field_refuses_and_names_the_field_only() -> None:
    found = parse("proxy host=10.1.2.3 userdb_home=/home/u")
    assert found.refused_by == ("proxy", "host")
    assert found.home == "/home/u"
    assert all("10.1.2.3" not in p for p in found.problems)
    assert "passdb field host is not supported by mailslot: the user is refused" in found.problems


def test_unknown_userdb_field_is_reported_and_ignored() -> None:
    found = parse("userdb_acl_groups=staff")
    assert not found.refused_by and not found.restricted
    assert found.problems == (
        "userdb field userdb_acl_groups is not supported by mailslot: ignored",
    )


def test_home_from_field_six_and_userdb_home_wins() -> None:
    assert parse("", home="/home/a").home == "/home/a"
    assert parse("userdb_home=/srv/b", home="/home/a").home == "/srv/b"


def test_uid_and_gid_from_fields_three_and_four_and_the_userdb_fields() -> None:
    found = parse("", uid="1000", gid="1001")
    assert (found.uid, found.gid) == (1000, 1001)
    found = parse("userdb_uid=root userdb_gid=0", uid="1000", gid="1001")
    assert (found.uid, found.gid) == (0, 0)
    found = parse("userdb_uid=no-such-user-here")
    assert found.uid is None
    assert found.problems == ("userdb_uid names no user: ignored",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("maildir:~/Maildir", "~/Maildir"),
        ("maildir:/var/vmail/%d/%n", "/var/vmail/{domain}/{localpart}"),
        ("maildir:%h/mail", "{home}/mail"),
        ("maildir:/m/%{user}", "/m/{user}"),
    ],
)
def test_userdb_mail_maildir_becomes_a_store_template(value: str, expected: str) -> None:
    found = parse(f"userdb_mail={value}")
    assert (found.mail, found.mail_unsupported, found.problems) == (expected, False, ())


@pytest.mark.parametrize(
    "value",
    [
        "mdbox:~/mdbox",
        "mbox:~/mail:INBOX=/var/mail/%u",
        "maildir:~/Maildir:LAYOUT=fs",
        "maildir:%Lu",
    ],
)
def test_userdb_mail_that_cannot_be_served_is_marked(value: str) -> None:
    found = parse(f"userdb_mail={value}")
    assert found.mail_unsupported
    assert len(found.problems) == 1 and "the user's maildrop is not opened" in found.problems[0]


@pytest.mark.parametrize(
    ("value", "size", "count"),
    [
        ("*:storage=1G", 1 << 30, None),
        ("*:storage=100", 100 * 1024, None),  # Dovecot: kilobytes without a unit
        ("*:bytes=100", 100, None),
        ("*:messages=50", None, 50),
        ("*:storage=10M:messages=5", 10 << 20, 5),
        ("*:storage=0", 0, None),
    ],
)
def test_quota_rule(value: str, size: int | None, count: int | None) -> None:
    found = parse(f"userdb_quota_rule={value}")
    assert (found.quota_bytes, found.quota_messages, found.problems) == (size, count, ())


@pytest.mark.parametrize(
    "value", ["Trash:storage=1G", "*:storage=10%", "*:storage=+10M", "*:ignore"]
)
def test_quota_rules_mailslot_cannot_apply_are_reported(value: str) -> None:
    found = parse(f"userdb_quota_rule={value}")
    assert (found.quota_bytes, found.quota_messages) == (None, None)
    assert found.problems[0].startswith("userdb_quota_rule ")
    assert found.problems[0].endswith("ignored, [delivery] quotas apply")


def test_extra_fields_may_hold_colons() -> None:
    # Dovecot joins the rest of the line back with ":" before splitting at spaces.
    line = "u:{PLAIN}x:::::: userdb_quota_rule=*:storage=1M:messages=2 nologin"
    found = extrafields.parse(line.split(":"))
    assert (found.quota_bytes, found.quota_messages, found.nologin) == (1 << 20, 2, True)


def test_the_running_users_name_resolves() -> None:
    import pwd

    name = pwd.getpwuid(os.getuid()).pw_name
    assert parse(f"userdb_uid={name}").uid == os.getuid()
