"""auth.policy: the refusals of a user with a right password, as Dovecot decides them."""

from __future__ import annotations

from mailslot.auth import extrafields, policy


def fields(extra: str) -> extrafields.ExtraFields:
    return extrafields.parse(f"u:{{PLAIN}}x::::::{extra}".split(":"))


def test_no_fields_no_refusal() -> None:
    assert policy.check(None, "192.0.2.1", "192.0.2.1") is None
    assert policy.check(fields("userdb_home=/h"), "192.0.2.1", "192.0.2.1") is None


def test_nologin_reply_text_and_delay() -> None:
    plain = policy.check(fields("nologin"), "192.0.2.1", "192.0.2.1")
    assert plain is not None
    assert (plain.kind, plain.text, plain.delay) == ("auth", policy.NOLOGIN_TEXT, True)
    moved = policy.check(fields("nologin reason=Moved nodelay"), "192.0.2.1", None)
    assert moved is not None and (moved.text, moved.delay) == ("Moved", False)


def test_allow_nets_looks_at_the_client_and_allow_real_nets_at_the_peer() -> None:
    nets = fields("allow_nets=10.0.0.0/8")
    assert policy.check(nets, "10.1.2.3", "192.0.2.9") is None
    refused = policy.check(nets, "192.0.2.9", "10.1.2.3")
    assert refused is not None
    # The reply of a wrong password; nodelay never shortens it.
    assert (refused.kind, refused.text, refused.delay) == ("auth", None, True)
    real = fields("allow_real_nets=10.0.0.0/8 nodelay")
    assert policy.check(real, "192.0.2.9", "10.1.2.3") is None
    refused = policy.check(real, "10.1.2.3", "192.0.2.9")
    assert refused is not None and refused.delay and refused.log == "allow_real_nets check failed"


def test_ipv4_mapped_and_scoped_addresses() -> None:
    nets = fields("allow_nets=127.0.0.0/8,fe80::/10")
    assert policy.check(nets, "::ffff:127.0.0.1", None) is None
    assert policy.check(nets, "fe80::1%eth0", None) is None
    assert policy.check(nets, "not an address", None) is not None


def test_local_matches_a_client_without_an_address() -> None:
    assert policy.check(fields("allow_nets=local"), None, None) is None
    assert policy.check(fields("allow_nets=127.0.0.1"), None, None) is not None


def test_network_refusal_comes_before_nologin() -> None:
    refused = policy.check(fields("nologin reason=Moved allow_nets=10.0.0.0/8"), "192.0.2.1", None)
    assert refused is not None and refused.text is None


def test_unsupported_passdb_field_refuses_like_a_wrong_password() -> None:
    refused = policy.check(fields("proxy"), "192.0.2.1", None)
    assert refused is not None and (refused.kind, refused.text) == ("auth", None)
    assert "proxy" in refused.log


def test_unservable_mail_is_a_permanent_system_failure() -> None:
    refused = policy.check(fields("userdb_mail=mdbox:~/mdbox"), "192.0.2.1", None)
    assert refused is not None and refused.kind == "sys-perm"
