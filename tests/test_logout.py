"""[log] logout_format: Dovecot's pop3_logout_format variables, short and long."""

from __future__ import annotations

import pytest

from mailslot.logout import (
    DEFAULT_FORMAT,
    LogoutCounts,
    check,
    end_kind,
    expand,
    uidl_change,
    wants_uidl_change,
)


def counts() -> LogoutCounts:
    c = LogoutCounts(message_count=9, message_bytes=2736, in_at=40, out_at=100)
    c.sent(top=False, octets=150, stored=140)
    c.sent(top=False, octets=89, stored=80)
    c.sent(top=True, octets=127, stored=500)
    c.deleted_count = 2
    c.ended(octets_in=108, octets_out=601)
    return c


def test_the_default_is_dovecots() -> None:
    assert expand(DEFAULT_FORMAT, counts()) == "top=1/127, retr=2/239, del=2/9, size=2736"


def test_every_variable_short_and_long() -> None:
    c = counts()
    short = "%t %p %r %b %d %m %s %i %o [%u] 100%%"
    long = (
        "%{top_count} %{top_bytes} %{retr_count} %{retr_bytes} %{deleted_count}"
        " %{message_count} %{message_bytes} %{input} %{output} [%{uidl_change}] 100%%"
    )
    assert expand(short, c) == expand(long, c) == "1 127 2 239 2 9 2736 68 501 [] 100%"
    assert check(short) is None and check(long) is None


@pytest.mark.parametrize(
    ("template", "named"),
    [("%x", "%x"), ("%{retr}", "%{retr}"), ("retr=%r %", "lone %"), ("%L%u", "%L")],
)
def test_unknown_variables_are_named(template: str, named: str) -> None:
    problem = check(template)
    assert problem is not None and named in problem


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("quit", "quit"),
        ("quit, deletions failed", "quit"),
        ("idle timeout", "timeout"),
        ("login timeout", "timeout"),
        ("server shutdown", "kicked"),
        ("kicked by the administrator", "kicked"),
        ("client closed the connection", "disconnect"),
        ("connection lost: ConnectionResetError", "disconnect"),
        ("too many bad commands", "error"),
        ("internal error", "error"),
        ("TLS handshake failed", "error"),
    ],
)
def test_end_kinds(reason: str, kind: str) -> None:
    assert end_kind(reason) == kind


def test_uidl_change_as_dovecot_computes_it() -> None:
    import zlib

    uids = ["a", "b", "c", "d"]
    h = [zlib.crc32(u.encode()) for u in uids]
    assert uidl_change(uids, listed=False, marks=set(), lowest_retr=0) == ""
    # Nothing retrieved or deleted: the client had them all and keeps them all.
    assert uidl_change(uids, True, set(), 0) == f"4/{h[0] ^ h[1] ^ h[2] ^ h[3]:08x}"
    # RETR 3 first (1 and 2 were there before), 3 and 4 deleted.
    assert uidl_change(uids, True, {3, 4}, 3) == f"2/{h[0] ^ h[1]:08x}"
    assert uidl_change(uids, True, {1, 4}, 3) == (f"2/{h[0] ^ h[1]:08x} -> 2/{h[1] ^ h[2]:08x}")


def test_uidl_change_is_computed_only_when_asked_for() -> None:
    assert wants_uidl_change("x=%u") and wants_uidl_change("%{uidl_change}")
    assert not wants_uidl_change(DEFAULT_FORMAT)
    assert not wants_uidl_change("100%%u")
