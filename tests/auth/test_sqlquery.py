"""Dovecot's password_query syntax into placeholders and bound values (mailslot.auth.sqlquery).

No database here: tests/auth/test_sql.py runs the translated queries on real servers.
"""

from __future__ import annotations

import pytest

from mailslot.auth.sqlquery import QueryError, compile_query

DOVECOT_PGSQL = (
    "SELECT username AS user, password FROM users WHERE username = '%n' AND domain = '%d'"
)


def test_quoted_variables_become_placeholders_without_their_quotes() -> None:
    pg = compile_query(DOVECOT_PGSQL, "postgresql")
    assert pg.text == (
        "SELECT username AS user, password FROM users WHERE username = $1 AND domain = $2"
    )
    assert pg.parameters("alice@example.org") == ("alice", "example.org")
    my = compile_query(DOVECOT_PGSQL, "mysql")
    assert my.text.endswith("WHERE username = %s AND domain = %s")
    assert my.parameters("alice@example.org") == ("alice", "example.org")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("%u", "Alice@Example.org"),
        ("%{user}", "Alice@Example.org"),
        ("%n", "Alice"),
        ("%{username}", "Alice"),
        ("%d", "Example.org"),
        ("%{domain}", "Example.org"),
        ("%Lu", "alice@example.org"),
        ("%L{user}", "alice@example.org"),
        ("%Un", "ALICE"),
        ("%Ed", "Example.org"),
        ("%LEd", "example.org"),
        ("%s", "pop3"),
        ("%{service}", "pop3"),
    ],
)
def test_each_dovecot_variable_and_modifier(variable: str, value: str) -> None:
    text = "SELECT password FROM u WHERE x = '" + variable + "' AND y = '%u'"  # noqa: S608
    query = compile_query(text, "mysql")
    assert query.parameters("Alice@Example.org") == (value, "Alice@Example.org")


def test_a_name_without_a_domain() -> None:
    query = compile_query(DOVECOT_PGSQL, "postgresql")
    assert query.parameters("alice") == ("alice", "")


def test_a_literal_holding_variables_and_text_is_one_parameter() -> None:
    query = compile_query(
        "SELECT password FROM mailbox WHERE username = '%n@%d' AND active = '1'", "postgresql"
    )
    assert query.text == "SELECT password FROM mailbox WHERE username = $1 AND active = '1'"
    assert query.parameters("bob@example.net") == ("bob@example.net",)


def test_doubled_quotes_and_mysql_backslashes_in_such_a_literal() -> None:
    pg = compile_query("SELECT password FROM t WHERE k = 'it''s %u'", "postgresql")
    assert pg.parameters("x") == ("it's x",)
    my = compile_query("SELECT password FROM t WHERE k = 'it\\'s %u'", "mysql")
    assert my.parameters("x") == ("it's x",)


def test_unquoted_and_double_quoted_variables() -> None:
    my = compile_query('SELECT password FROM t WHERE a = %u AND b = "%d"', "mysql")
    assert my.text == "SELECT password FROM t WHERE a = %s AND b = %s"
    assert my.parameters("a@b") == ("a@b", "b")


def test_percent_signs_outside_variables() -> None:
    """``%%`` is a percent sign; PyMySQL formats with ``%``, so for MySQL it is doubled."""
    text = "SELECT password FROM t WHERE u = '%u' AND note NOT LIKE 'x%%' -- 100%%\n"
    assert compile_query(text, "postgresql").text == (
        "SELECT password FROM t WHERE u = $1 AND note NOT LIKE 'x%' -- 100%%\n"
    )
    assert compile_query(text, "mysql").text == (
        "SELECT password FROM t WHERE u = %s AND note NOT LIKE 'x%%' -- 100%%%%\n"
    )


def test_values_never_enter_the_query_text() -> None:
    query = compile_query(DOVECOT_PGSQL, "postgresql")
    hostile = "x'OR'1'='1@d'--"
    assert hostile not in query.text and "OR" not in query.text.split("FROM")[1]
    assert query.parameters(hostile) == ("x'OR'1'='1", "d'--")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "is empty"),
        ("SELECT password FROM users", "uses no user variable"),
        ("SELECT password FROM users WHERE s = '%s'", "uses no user variable"),
        ("SELECT password FROM users WHERE u = '%u' AND p = '%w'", "password (%w) is never"),
        ("SELECT password FROM users WHERE u = '%u' AND p = '%{password}'", "never sent"),
        ("SELECT password FROM users WHERE u = '%u' AND ip = '%r'", "use allow_nets"),
        ("SELECT password FROM users WHERE u = '%u' AND ip = '%{rip}'", "allow_nets"),
        ("SELECT password FROM users WHERE u = '%{home}'", "unknown variable %{home}"),
        ("SELECT password FROM users WHERE u = '%x'", "unknown variable or modifier %x"),
        ("SELECT password FROM users WHERE u = '%3u'", "widths and offsets"),
        ("SELECT password FROM users WHERE u = '%{user|lower}'", "only plain variables"),
        ("SELECT password FROM users WHERE u = '%{user'", "without its closing"),
        ("SELECT password FROM users WHERE u = '%u", "never closed"),
        ("SELECT password FROM users WHERE u = '%u' AND x LIKE 'a%'", "unknown variable"),
        ("SELECT password FROM users WHERE u = '%u' %", "lone %"),
        ("SELECT password FROM users /* x", "never closed"),
    ],
)
def test_refused_queries_say_why(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_query(query, "postgresql")


def test_a_variable_in_a_postgresql_identifier_is_refused() -> None:
    with pytest.raises(QueryError, match="double-quoted identifier"):
        compile_query('SELECT password FROM users WHERE "%u" = 1', "postgresql")


def test_comments_are_kept_and_their_quotes_ignored() -> None:
    query = compile_query(
        "SELECT password -- the user's hash\nFROM users /* it's */ WHERE u = '%u'", "postgresql"
    )
    assert query.text.endswith("WHERE u = $1")
    assert query.parameters("a") == ("a",)
