"""[auth] username_format: Dovecot's auth_username_format, applied before every lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailslot.auth.base import AuthenticationFailed, User
from mailslot.auth.memory import MemoryAuthenticator
from mailslot.auth.usernameformat import NormalisingAuthenticator, apply, validate_format

from .conftest import run


@pytest.mark.parametrize(
    ("fmt", "name", "expected"),
    [
        ("%Lu", "Alice@Example.ORG", "alice@example.org"),
        ("%u", "Alice", "Alice"),
        ("%Uu", "alice", "ALICE"),
        ("%Ln", "Alice@Example.org", "alice"),
        ("%n@%Ld", "Alice@Example.org", "Alice@example.org"),
        ("%L{user}", "BOB", "bob"),
        ("%{username}+%{domain}", "a@b", "a+b"),
        ("%n", "nodomain", "nodomain"),
        ("%d", "nodomain", ""),
        ("100%%-%Lu", "X", "100%-x"),
        ("%Lu", "a@b@C", "a@b@c"),  # the domain is after the last @
    ],
)
def test_apply(fmt: str, name: str, expected: str) -> None:
    assert apply(fmt, name) == expected


def test_case_changes_are_ascii_only_as_dovecots() -> None:
    # str.lower() would turn U+0130 into two code points; Dovecot's str_lcase leaves it.
    assert apply("%Lu", "\u0130VAN") == "\u0130van"
    assert apply("%Uu", "\u00e9t\u00e9") == "\u00e9T\u00e9"


@pytest.mark.parametrize("fmt", ["%Lu", "%u", "%n", "%d", "%n@example.org", "%L{user}"])
def test_valid_formats(fmt: str) -> None:
    assert validate_format(fmt) is None


@pytest.mark.parametrize(
    ("fmt", "says"),
    [("%x", "%x is not a variable"), ("%Lu%", "a trailing %"), ("fixed", "names no part")],
)
def test_invalid_formats(fmt: str, says: str) -> None:
    problem = validate_format(fmt)
    assert problem is not None and says in problem


def test_mixed_case_logins_reach_the_lower_case_user() -> None:
    inner = MemoryAuthenticator({"alice": "{PLAIN}secret"})
    auth = NormalisingAuthenticator(inner)
    assert run(auth.authenticate("ALICE", "secret")) == User("alice")
    assert run(auth.lookup("Alice")) == User("alice")
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("ALICE", "wrong"))


def test_without_lower_casing_names_stay_apart() -> None:
    auth = NormalisingAuthenticator(MemoryAuthenticator({"alice": "{PLAIN}secret"}), "%u")
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("Alice", "secret"))


def test_a_name_the_format_makes_invalid_is_refused_not_passed_through() -> None:
    # "%n" of "@x" is empty: the backend must see "" (refused), not "@x" (a user here).
    auth = NormalisingAuthenticator(MemoryAuthenticator({"@x": "{PLAIN}s", "x": "{PLAIN}s"}), "%n")
    with pytest.raises(AuthenticationFailed):
        run(auth.authenticate("@x", "s"))
    assert run(auth.authenticate("x@y", "s")) == User("x")


def test_load_and_aclose_reach_the_inner_backend(tmp_path: Path) -> None:
    class Inner(MemoryAuthenticator):
        loaded = closed = False

        def load(self) -> None:
            self.loaded = True

        async def aclose(self) -> None:
            self.closed = True

    inner = Inner({})
    auth = NormalisingAuthenticator(inner)
    auth.load()
    run(auth.aclose())
    assert inner.loaded and inner.closed
