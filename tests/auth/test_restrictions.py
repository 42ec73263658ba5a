"""auth.restrictions: Dovecot's passdb fields as both backends hand them over, as strings."""

from __future__ import annotations

from mailslot.auth import restrictions


def test_sql_columns_read_as_passwd_file_tokens() -> None:
    """A column's value where the passwd-file has a bare key: any value sets nologin."""
    found, problems = restrictions.parse(
        [("nologin", "0"), ("reason", "gone\x07"), ("allow_nets", "10.0.0.0/8, 192.0.2.1")]
    )
    assert problems == ()
    assert (found.nologin, found.reason) == (True, "gone?")
    assert found.allow_nets is not None and len(found.allow_nets) == 2


def test_any_other_passdb_field_refuses_and_names_the_field_only() -> None:
    found, problems = restrictions.parse([("fail", "y"), ("allow_nets", "10.0.0.0/33")])
    assert found.refused_by == ("fail", "allow_nets")
    assert problems == (
        "passdb field fail is not supported by mailslot: the user is refused",
        "passdb field allow_nets is not a list of networks: the user is refused",
    )
    refusal = restrictions.check(found, "10.1.2.3", "10.1.2.3")
    assert refusal is not None and (refusal.text, refusal.delay) == (None, True)


def test_a_single_ipv6_address_allows_that_client() -> None:
    """Dovecot compares the client's whole address; a caller that keys clients by their
    IPv6 prefix is matched only by a network at least that wide."""
    found, _ = restrictions.parse([("allow_nets", "2001:db8::5")])
    assert restrictions.check(found, "2001:db8::5", None) is None
    assert restrictions.check(found, "2001:db8::6", None) is not None
    assert not restrictions.within("2001:db8::/64", found.allow_nets or ())
    assert restrictions.within("2001:db8::/64", restrictions.parse_networks("2001:db8::/32"))
