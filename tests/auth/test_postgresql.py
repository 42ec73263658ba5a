"""What only the PostgreSQL users have: the dummy hash is of the scheme the table uses, every
failure costs one query and one verification, an outage is [SYS/TEMP], and the admin
functions behind ``mailslot user``.  The shared contract is in test_auth_contract.py.
"""

from __future__ import annotations

import pytest
from tests.support.postgres import PostgresServer
from tests.support.server import free_port

from mailslot.auth import schemes
from mailslot.auth.admin import NoSuchUser, UserExists
from mailslot.auth.base import AuthenticationFailed, TemporaryAuthFailure
from mailslot.auth.postgresql import PostgresAuthenticator, PostgresUsers
from mailslot.store.postgresql.pool import LazyPool

from .conftest import STORED, _fill_postgresql, run


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    dsn = postgres.database("users")
    run(_fill_postgresql(dsn))
    return dsn


def test_every_failure_verifies_one_hash_of_the_tables_scheme(dsn: str) -> None:
    seen: list[str] = []

    def verifier(password: str, stored: str) -> bool:
        seen.append(stored)
        return schemes.verify(password, stored)

    users = PostgresAuthenticator(LazyPool(dsn, size=2), verifier=verifier)

    async def scenario() -> None:
        for name in ("alice", "mallory", "a\x00b", "../x"):
            with pytest.raises(AuthenticationFailed):
                await users.authenticate(name, "wrong")
        await users.aclose()

    run(scenario())
    assert len(seen) == 4
    # Three users, three schemes: the dummy is one of the table's hashes, never a cheap one
    # chosen by the attacker's choice of name.
    assert seen[0] == STORED["alice"]
    assert all(stored in STORED.values() for stored in seen[1:])
    assert len(set(seen[1:])) == 1


def test_an_unreachable_database_is_a_temporary_failure() -> None:
    users = PostgresAuthenticator(
        LazyPool(f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout=2.0)
    )
    with pytest.raises(TemporaryAuthFailure):
        run(users.authenticate("alice", "wonderland"))
    with pytest.raises(TemporaryAuthFailure):
        run(users.lookup("alice"))


def test_admin_add_passwd_delete_list(dsn: str) -> None:
    async def scenario() -> None:
        pool = LazyPool(dsn, size=2)
        admin = PostgresUsers(pool)
        users = PostgresAuthenticator(pool)
        await admin.add_user("dave", "first-pw", scheme="SHA512-CRYPT", home="/home/dave")
        with pytest.raises(UserExists):
            await admin.add_user("dave", "other")
        assert (await users.authenticate("dave", "first-pw")).home == "/home/dave"
        await admin.set_password("dave", "second-pw")
        with pytest.raises(AuthenticationFailed):
            await users.authenticate("dave", "first-pw")
        assert (await users.authenticate("dave", "second-pw")).name == "dave"
        assert await admin.list_users() == ["alice", "bob", "carol", "dave"]
        await admin.delete_user("dave")
        with pytest.raises(NoSuchUser):
            await admin.delete_user("dave")
        with pytest.raises(NoSuchUser):
            await admin.set_password("dave", "x")
        assert await users.lookup("dave") is None
        assert str(admin) == "the PostgreSQL user table"
        await pool.aclose()

    run(scenario())
