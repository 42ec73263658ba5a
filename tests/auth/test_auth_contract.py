"""The Authenticator contract (mailslot.auth.base), run against every backend.

RFC 3206 section 4: unknown user, wrong password and invalid name are one indistinguishable
failure; lookup never checks a password.
"""

from __future__ import annotations

import asyncio

import pytest

from mailslot.auth.base import AuthenticationFailed, Authenticator, User

from .conftest import PASSWORDS, run

INVALID_NAMES = ["../x", "a/b", "a\x00b", "a\r\nb", "x" * 300, "", ".alice", "al ice", "a:b"]


@pytest.mark.parametrize("name", sorted(PASSWORDS))
def test_right_password_returns_the_user(authenticator: Authenticator, name: str) -> None:
    user = run(authenticator.authenticate(name, PASSWORDS[name]))
    assert user.name == name


def test_home_comes_from_the_user_database(authenticator: Authenticator) -> None:
    assert run(authenticator.authenticate("alice", "wonderland")) == User("alice", "/home/alice")
    assert run(authenticator.authenticate("bob", "b0b-secret")) == User("bob", None)


@pytest.mark.parametrize("name", sorted(PASSWORDS))
def test_wrong_password_fails(authenticator: Authenticator, name: str) -> None:
    with pytest.raises(AuthenticationFailed):
        run(authenticator.authenticate(name, PASSWORDS[name] + "x"))


@pytest.mark.parametrize("name", sorted(PASSWORDS))
def test_empty_password_fails(authenticator: Authenticator, name: str) -> None:
    with pytest.raises(AuthenticationFailed):
        run(authenticator.authenticate(name, ""))


def test_unknown_user_fails_even_with_another_users_password(
    authenticator: Authenticator,
) -> None:
    with pytest.raises(AuthenticationFailed):
        run(authenticator.authenticate("mallory", "wonderland"))


def test_names_are_case_sensitive(authenticator: Authenticator) -> None:
    with pytest.raises(AuthenticationFailed):
        run(authenticator.authenticate("Alice", "wonderland"))


@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_invalid_names_fail_like_unknown_users(authenticator: Authenticator, name: str) -> None:
    with pytest.raises(AuthenticationFailed):
        run(authenticator.authenticate(name, "wonderland"))


def test_failures_carry_no_detail(authenticator: Authenticator) -> None:
    details = []
    for name, password in [("alice", "nope"), ("mallory", "nope"), ("../x", "nope")]:
        with pytest.raises(AuthenticationFailed) as info:
            run(authenticator.authenticate(name, password))
        details.append((type(info.value), info.value.args))
    assert details == [(AuthenticationFailed, ())] * 3


def test_lookup(authenticator: Authenticator) -> None:
    assert run(authenticator.lookup("alice")) == User("alice", "/home/alice")
    assert run(authenticator.lookup("carol")) == User("carol", None)
    assert run(authenticator.lookup("mallory")) is None


@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
def test_lookup_of_invalid_name_is_none(authenticator: Authenticator, name: str) -> None:
    assert run(authenticator.lookup(name)) is None


def test_concurrent_logins_are_independent(authenticator: Authenticator) -> None:
    async def attempts() -> list[object]:
        calls = [authenticator.authenticate(n, p) for n, p in PASSWORDS.items()]
        calls += [authenticator.authenticate(n, "wrong") for n in PASSWORDS]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(attempts())
    assert [r.name for r in results[:3]] == list(PASSWORDS)  # type: ignore[union-attr]
    assert all(isinstance(r, AuthenticationFailed) for r in results[3:])


@pytest.mark.parametrize("name", sorted(PASSWORDS))
def test_the_client_keyword_changes_nothing_but_who_asks(
    authenticator: Authenticator, name: str
) -> None:
    """``client=`` (the session's address key) is accepted by every backend, with or without
    a verification pool, and the same credentials give the same answer."""
    user = run(authenticator.authenticate(name, PASSWORDS[name], client="2001:db8::/64"))
    assert user.name == name
    with pytest.raises(AuthenticationFailed):
        run(authenticator.authenticate(name, PASSWORDS[name] + "x", client="192.0.2.1"))


def test_a_client_over_its_share_of_the_pool_fails_without_a_check() -> None:
    """A backend with a pool refuses a client's check past ``per_client`` as a failure."""
    from mailslot.auth.memory import MemoryAuthenticator
    from mailslot.auth.pool import VerifyPool

    calls: list[str] = []

    def verifier(password: str, stored: str) -> bool:
        calls.append(password)
        return True

    pool = VerifyPool(1, per_client=1)
    from passlib.hash import bcrypt

    slow = "{BLF-CRYPT}" + bcrypt.using(rounds=4, ident="2y").hash("unused")
    auth = MemoryAuthenticator({"alice": slow}, verifier=verifier, pool=pool)

    async def two_at_once() -> list[object]:
        return await asyncio.gather(
            auth.authenticate("alice", "one", client="192.0.2.1"),
            auth.authenticate("alice", "two", client="192.0.2.1"),
            return_exceptions=True,
        )

    first, second = asyncio.run(two_at_once())
    assert first == User("alice", None)
    assert isinstance(second, AuthenticationFailed)
    assert calls == ["one"]
