"""What only the SQL passdb has, on a real PostgreSQL and a real MariaDB: the administrator's
query with its variables bound (an injection in the name finds nothing), Dovecot's passdb
fields, ``default_pass_scheme``, one verification per failure, and an outage that is
[SYS/TEMP] and over when the database is back.  The shared contract is test_auth_contract.py.
"""

from __future__ import annotations

import logging

import pytest
from passlib.hash import md5_crypt, sha512_crypt
from tests.support.mariadb import MariadbServer

from mailslot.auth import schemes
from mailslot.auth.base import AuthenticationFailed, TemporaryAuthFailure, User
from mailslot.auth.sql import SqlAuthenticator
from mailslot.auth.sqldb import DsnError, connect_arguments, open_database
from mailslot.auth.sqlfields import canonical_name, client_allowed, passdb_fields
from mailslot.auth.sqlquery import compile_query

from .conftest import PASSWORDS, STORED, fill_sql_mysql, run, sql_authenticator

DRIVERS = ["postgresql", "mysql"]
ALICE = STORED["alice"]
BOB = STORED["bob"]  # {SSHA256}


def rows(*extra: tuple[str, str, str, str | None]) -> list[tuple[str, str, str, str | None]]:
    return [("alice", "", ALICE, "/home/alice"), ("bob", "", BOB, None), *extra]


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_injection_in_the_name_matches_nothing(
    request: pytest.FixtureRequest, driver: str
) -> None:
    """``x'OR'1'='1`` is a valid user name; pasted into ``username = '%n'`` it would match
    every row (alice's first) and alice's password would log in."""
    users = sql_authenticator(request, driver, rows())
    for name in ("x'OR'1'='1", "x'OR'1'='1@x'OR'1'='1", "alice'--", "'OR''='"):
        with pytest.raises(AuthenticationFailed):
            run(users.authenticate(name, PASSWORDS["alice"]))
        assert run(users.lookup(name)) is None
    assert run(users.authenticate("alice", PASSWORDS["alice"])).name == "alice"


@pytest.mark.parametrize("driver", DRIVERS)
def test_domain_users_and_the_canonical_user_column(
    request: pytest.FixtureRequest, driver: str
) -> None:
    """A postfixadmin-style ``mailbox`` table: ``'%Ln@%Ld'`` is one bound value, and the
    ``user`` column names the account whatever case the client typed."""
    users = sql_authenticator(
        request,
        driver,
        [("dave@example.org", "example.org", ALICE, None)],
        query=(
            "SELECT username AS user, password, NULL AS nologin FROM users"
            " WHERE username = '%Ln@%Ld' AND active = '1'"
        ),
    )
    assert run(users.authenticate("Dave@Example.ORG", PASSWORDS["alice"])) == User(
        "dave@example.org", None
    )
    with pytest.raises(AuthenticationFailed):
        run(users.authenticate("dave@example.com", PASSWORDS["alice"]))


@pytest.mark.parametrize("driver", DRIVERS)
def test_default_pass_scheme_reads_hashes_without_a_prefix(
    request: pytest.FixtureRequest, driver: str
) -> None:
    crypt = sha512_crypt.using(rounds=5000).hash("crypted")  # a bare $6$ string
    ssha = schemes.hash_password("salted", "SSHA256").removeprefix("{SSHA256}")
    table = [("erin", "", crypt, None), ("fred", "", ssha, None)]
    users = sql_authenticator(request, driver, table)
    assert run(users.authenticate("erin", "crypted")).name == "erin"
    with pytest.raises(AuthenticationFailed):  # a bare SSHA256 is no crypt(3) string
        run(users.authenticate("fred", "salted"))
    users = sql_authenticator(request, driver, table, default_pass_scheme="SSHA256")
    assert run(users.authenticate("fred", "salted")).name == "fred"


@pytest.mark.parametrize("driver", DRIVERS)
def test_md5_crypt_only_with_legacy_schemes(request: pytest.FixtureRequest, driver: str) -> None:
    """Dovecot's SQL default scheme, MD5-CRYPT, is verified only when [auth] legacy_schemes
    lists it (backends.build passes the setting as ``legacy``)."""
    table = [("olga", "", md5_crypt.hash("old-secret"), None)]
    users = sql_authenticator(request, driver, table)
    with pytest.raises(AuthenticationFailed):
        run(users.authenticate("olga", "old-secret"))
    users = sql_authenticator(request, driver, table, legacy=("MD5-CRYPT",))
    assert run(users.authenticate("olga", "old-secret")).name == "olga"
    with pytest.raises(AuthenticationFailed):
        run(users.authenticate("olga", "wrong"))


@pytest.mark.parametrize("driver", DRIVERS)
def test_nologin_allow_nets_and_proxy_refuse_a_right_password(
    request: pytest.FixtureRequest, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    query = (
        "SELECT username AS user, password,"
        " CASE WHEN username = 'nina' THEN 'Y' END AS nologin,"
        " CASE WHEN username = 'nina' THEN 'moved away' END AS reason,"
        " CASE WHEN username = 'nets' THEN '10.0.0.0/8, 2001:db8::/32' END AS allow_nets,"
        " CASE WHEN username = 'prox' THEN 'Y' END AS proxy"
        " FROM users WHERE username = '%n'"
    )
    table = [(n, "", ALICE, None) for n in ("nina", "nets", "prox", "okay")]
    users = sql_authenticator(request, driver, table, query=query)
    caplog.set_level(logging.INFO, "mailslot.auth.sql")
    for name, client in [("nina", "10.1.2.3"), ("nets", "192.0.2.1"), ("nets", None)]:
        with pytest.raises(AuthenticationFailed):
            run(users.authenticate(name, PASSWORDS["alice"], client=client))
    with pytest.raises(AuthenticationFailed):
        run(users.authenticate("prox", PASSWORDS["alice"], client="10.1.2.3"))
    assert run(users.authenticate("nets", PASSWORDS["alice"], client="10.1.2.3")).name == "nets"
    assert run(users.authenticate("nets", PASSWORDS["alice"], client="2001:db8:1::/64"))
    assert run(users.authenticate("okay", PASSWORDS["alice"], client="192.0.2.1")).name == "okay"
    text = caplog.text
    assert "user=nina: nologin (moved away)" in text
    assert "user=nets: client 192.0.2.1 is not in allow_nets" in text
    assert "user=prox: password_query returned proxy" in text


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_failure_verifies_one_hash(request: pytest.FixtureRequest, driver: str) -> None:
    seen: list[str] = []

    def verifier(password: str, stored: str) -> bool:
        seen.append(stored)
        return schemes.verify(password, stored)

    users = sql_authenticator(request, driver, rows(), verifier=verifier)
    run(users.authenticate("alice", PASSWORDS["alice"]))  # the table's scheme is learnt
    seen.clear()
    for name in ("alice", "mallory", "a\x00b", "../x", "bob"):
        with pytest.raises(AuthenticationFailed):
            run(users.authenticate(name, "wrong"))
    assert len(seen) == 5
    # An unknown or invalid name is checked against a hash of the costliest scheme seen,
    # never a cheap one of the attacker's choosing.
    assert seen == [ALICE, ALICE, ALICE, ALICE, BOB]


@pytest.mark.parametrize("driver", DRIVERS)
def test_several_rows_are_a_configuration_error(
    request: pytest.FixtureRequest, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    users = sql_authenticator(
        request,
        driver,
        rows(("alice", "example.org", ALICE, None)),
        query="SELECT password FROM users WHERE username = '%n'",
    )
    with pytest.raises(TemporaryAuthFailure):
        run(users.authenticate("alice", PASSWORDS["alice"]))
    assert "password_query returned 2 rows for user=alice" in caplog.text


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_unused_column_is_named_once(
    request: pytest.FixtureRequest, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    users = sql_authenticator(
        request,
        driver,
        rows(),
        query="SELECT password, 'maildir:~/Maildir' AS userdb_mail FROM users"
        " WHERE username = '%n'",
    )
    for _ in range(3):
        run(users.authenticate("alice", PASSWORDS["alice"]))
    assert caplog.text.count("column userdb_mail is not used") == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_sql_error_in_the_query_is_a_temporary_failure(
    request: pytest.FixtureRequest, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    users = sql_authenticator(
        request, driver, rows(), query="SELECT password FROM no_such_table WHERE u = '%u'"
    )
    with pytest.raises(TemporaryAuthFailure):
        run(users.authenticate("alice", PASSWORDS["alice"]))
    assert "user database unavailable" in caplog.text
    assert "no_such_table" in caplog.text


def test_postgresql_down_then_back(request: pytest.FixtureRequest) -> None:
    postgres = request.getfixturevalue("postgres")
    users = sql_authenticator(request, "postgresql", rows())

    async def scenario(stop: bool) -> User | BaseException:
        # One event loop, its pool kept: the stop drops the pooled connection.
        try:
            user = await users.authenticate("alice", PASSWORDS["alice"])
            if not stop:
                return user
            postgres.stop()
            try:
                return await users.authenticate("alice", PASSWORDS["alice"])
            except TemporaryAuthFailure as exc:
                postgres.start()
                assert (await users.authenticate("alice", PASSWORDS["alice"])).name == "alice"
                return exc
        finally:
            await users.aclose()

    import asyncio

    outcome = asyncio.run(scenario(stop=True))
    assert isinstance(outcome, TemporaryAuthFailure)


def test_mariadb_down_then_back(request: pytest.FixtureRequest) -> None:
    mariadb = request.getfixturevalue("mariadb")
    users = sql_authenticator(request, "mysql", rows())
    import asyncio

    async def scenario() -> BaseException | None:
        try:
            assert (await users.authenticate("alice", PASSWORDS["alice"])).name == "alice"
            mariadb.stop()
            try:
                await users.authenticate("alice", PASSWORDS["alice"])
            except TemporaryAuthFailure as exc:
                mariadb.start()
                # The pooled connection died with the server: a new one answers.
                assert (await users.authenticate("alice", PASSWORDS["alice"])).name == "alice"
                return exc
            return None
        finally:
            await users.aclose()

    assert isinstance(asyncio.run(scenario()), TemporaryAuthFailure)


def test_an_unreachable_database_is_a_temporary_failure() -> None:
    from tests.support.server import free_port

    query = compile_query("SELECT password FROM users WHERE username = '%u'", "mysql")
    for driver, dsn in [
        ("postgresql", f"postgresql://postgres@127.0.0.1:{free_port()}/x"),
        ("mysql", f"mysql://root@127.0.0.1:{free_port()}/x"),
    ]:
        users = SqlAuthenticator(
            open_database(driver, dsn, connect_timeout=2.0),  # type: ignore[arg-type]
            query,
        )
        with pytest.raises(TemporaryAuthFailure):
            run(users.authenticate("alice", "wonderland"))
        with pytest.raises(TemporaryAuthFailure):
            run(users.lookup("alice"))


def test_connect_strings() -> None:
    assert connect_arguments(
        "mysql", "host=/run/mysqld/mysqld.sock dbname=mail user=dovecot password='a b'"
    ) == {
        "unix_socket": "/run/mysqld/mysqld.sock",
        "db": "mail",
        "user": "dovecot",
        "password": "a b",
    }
    assert connect_arguments("postgresql", "host=db port=5433 dbname=mail user=u") == {
        "host": "db",
        "port": 5433,
        "database": "mail",
        "user": "u",
    }
    assert connect_arguments("mysql", "mysql://u:p%40ss@db:3307/mail") == {
        "host": "db",
        "port": 3307,
        "user": "u",
        "password": "p@ss",
        "db": "mail",
    }
    for driver, dsn, message in [
        ("mysql", "postgresql://x/y", "starts with mysql://"),
        ("postgresql", "host=db option_file=x", "unknown key 'option_file'"),
        ("mysql", "host=db port=x", "port must be a number"),
        ("mysql", "user=u password = secret", "has a word without '='"),
    ]:
        with pytest.raises(DsnError, match=message) as info:
            connect_arguments(driver, dsn)  # type: ignore[arg-type]
        assert "secret" not in str(info.value)


def test_username_and_domain_columns_name_the_account() -> None:
    fields = passdb_fields({"username": "Alice", "domain": "example.org"})
    assert canonical_name("alice@EXAMPLE.org", fields) == "Alice@example.org"
    assert canonical_name("alice", passdb_fields({"username": "alice", "domain": ""})) == "alice"
    assert canonical_name("a@b", passdb_fields({"domain": "c"})) == "a@c"
    assert canonical_name("a@b", passdb_fields({"user": "x@y", "username": "z"})) == "z@y"


def test_fields_and_networks() -> None:
    fields = passdb_fields(
        {"USER": "a", "Password": "$6$x", "nologin": None, "userdb_home": "/h", "nodelay": "y"}
    )
    assert (fields.user, fields.password, fields.home) == ("a", "{CRYPT}$6$x", "/h")
    # nodelay is honoured (for a nologin refusal), as in the passwd-file and Dovecot.
    assert not fields.nologin and fields.restrictions.nodelay and fields.unused == ()
    assert passdb_fields({"password_noscheme": "{x}"}, "PLAIN").password == "{PLAIN}{x}"
    assert passdb_fields({"password": b"{PLAIN}x", "nologin": ""}).nologin
    assert client_allowed("192.0.2.7", ("192.0.2.0/24",))
    assert not client_allowed("192.0.2.7", ("2001:db8::/32", "junk"))
    assert not client_allowed("2001:db8::/32", ("2001:db8::/64",))  # wider than allowed
    assert not client_allowed("unknown", ("0.0.0.0/0",))


@pytest.mark.parametrize("sql_mode", ["", "NO_BACKSLASH_ESCAPES"])
def test_mysql_values_stay_values_in_either_escaping_mode(
    request: pytest.FixtureRequest, sql_mode: str
) -> None:
    """PyMySQL escapes a parameter as the server reads strings: with backslash escapes (the
    default) or, under ``NO_BACKSLASH_ESCAPES``, by doubling quotes.  A value made to break
    out in the other mode finds nothing; a name with a quote finds its row.  (Backslashes
    never get this far in a login: mailslot.auth.usernames refuses them.)"""
    mariadb: MariadbServer = request.getfixturevalue("mariadb")
    name, dsn = mariadb.database("escape")
    fill_sql_mysql(mariadb, name, [("o'brien", "", ALICE, None), ("alice", "", ALICE, None)])
    query = compile_query("SELECT password FROM users WHERE username = '%u'", "mysql")
    (old_mode,) = mariadb.execute("SELECT @@GLOBAL.sql_mode")[0]
    mariadb.execute(f"SET GLOBAL sql_mode = '{sql_mode}'")
    try:
        database = open_database("mysql", dsn, size=1)

        async def lookups() -> list[int]:
            try:
                found = []
                for value in ("o'brien", "x\\' OR 1=1 -- ", "x' OR 1=1 -- ", "x\\'' OR 1=1 -- "):
                    found.append(len(await database.fetch(query, (value,))))
                return found
            finally:
                await database.aclose()

        assert run(lookups()) == [1, 0, 0, 0]
    finally:
        mariadb.execute(f"SET GLOBAL sql_mode = '{old_mode}'")
