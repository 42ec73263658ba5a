"""[log] logout_format: Dovecot's pop3_logout_format variables, short and long."""

from __future__ import annotations

import pytest

from mailslot.logout import DEFAULT_FORMAT, LogoutCounts, check, end_kind, expand


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
