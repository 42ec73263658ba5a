"""``[auth.sql]`` in the configuration and ``mailslot check-config`` (with ``--connect``
against a real PostgreSQL and a real MariaDB): every problem names its key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from tests.support.mariadb import MariadbServer
from tests.support.postgres import PostgresServer
from tests.support.tls import make_tls_files

from mailslot.cli import main
from mailslot.config import ConfigError, ConfigProblem, loads

from .conftest import fill_sql_mysql, fill_sql_postgresql, run

BASE = """\
[[listener]]
address = "127.0.0.1"
port = 1995
tls = "implicit"

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[server]
run_as_root = "the tests run as root"

[auth]
backend = "sql"

[auth.sql]
"""
QUERY = "SELECT username AS user, password FROM users WHERE username = '%n' AND domain = '%d'"


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("placeholder\n")
    return tmp_path


def text(sql: str) -> str:
    return BASE + textwrap.dedent(sql)


def problems(conf_dir: Path, sql: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        loads(text(sql), conf_dir / "mailslot.toml")
    return info.value.problems


def test_a_dovecot_style_table_loads(conf_dir: Path) -> None:
    config = loads(
        text(
            f"""\
            driver = "mysql"
            dsn = "host=/run/mysqld/mysqld.sock dbname=mail user=dovecot"
            password_query = "{QUERY}"
            default_pass_scheme = "SHA512-CRYPT"
            pool_size = 3
            query_timeout = 2
            """
        ),
        conf_dir / "mailslot.toml",
    )
    sql = config.auth.sql
    assert (config.auth.backend, sql.driver, sql.pool_size, sql.query_timeout) == (
        "sql",
        "mysql",
        3,
        2.0,
    )
    assert sql.password_query == QUERY and sql.default_pass_scheme == "SHA512-CRYPT"


@pytest.mark.parametrize(
    ("sql", "key", "message"),
    [
        ('dsn = "postgresql://db/mail"\n', "auth.sql.password_query", "is required"),
        (
            "password_query = \"SELECT password FROM users WHERE u = '%u' AND p = '%w'\"\n",
            "auth.sql.password_query",
            "the password (%w) is never sent",
        ),
        ('password_query = "SELECT password FROM users"\n', "auth.sql.password_query", "no user"),
        (f'password_query = "{QUERY}"\ndsn = "mysql://db/x"\n', "auth.sql.dsn", "postgresql://"),
        (
            f'password_query = "{QUERY}"\ndsn = "x"\ndsn_file = "dsn"\n',
            "auth.sql.dsn_file",
            "not both",
        ),
        (f'password_query = "{QUERY}"\ndsn_file = "nowhere"\n', "auth.sql.dsn_file", "nowhere"),
        (
            f'password_query = "{QUERY}"\ndefault_pass_scheme = "ROT13"\n',
            "auth.sql.default_pass_scheme",
            '"ROT13" is not a scheme',
        ),
        (f'password_query = "{QUERY}"\npool_size = 0\n', "auth.sql.pool_size", "1 or more"),
        (f'password_query = "{QUERY}"\npasword = "x"\n', "auth.sql.pasword", "unknown key"),
        (f'password_query = "{QUERY}"\ndriver = "oracle"\n', "auth.sql.driver", '"mysql"'),
    ],
)
def test_problems_name_their_key_and_line(conf_dir: Path, sql: str, key: str, message: str) -> None:
    (found,) = problems(conf_dir, sql)
    assert found.key == key
    assert message in found.message
    if key != "auth.sql.password_query" or "is required" not in message:
        assert found.line is not None and found.line > BASE.count("\n")


def _config_file(conf_dir: Path, driver: str, dsn: str, query: str) -> Path:
    """A file check-config passes up to [auth.sql]: real certificates (tests/support/tls.py)."""
    tls = make_tls_files(conf_dir / "tls")
    path = conf_dir / "mailslot.toml"
    body = text(
        f"""\
        driver = "{driver}"
        dsn = "{dsn}"
        password_query = "{query}"
        """
    )
    body = body.replace('"cert.pem"', f'"{tls.certificate}"')
    path.write_text(body.replace('"key.pem"', f'"{tls.private_key}"'))
    return path


def _dsn(request: pytest.FixtureRequest, driver: str) -> str:
    if driver == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        dsn = postgres.database("check")
        run(fill_sql_postgresql(dsn, []))
        return dsn
    mariadb: MariadbServer = request.getfixturevalue("mariadb")
    name, dsn = mariadb.database("check")
    fill_sql_mysql(mariadb, name, [])
    return dsn


@pytest.mark.parametrize("driver", ["postgresql", "mysql"])
def test_check_config_connect_runs_the_query(
    request: pytest.FixtureRequest,
    conf_dir: Path,
    driver: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = _dsn(request, driver)
    good = _config_file(conf_dir, driver, dsn, QUERY)
    assert main(["check-config", "--config", str(good), "--connect"]) == 0
    assert "OK" in capsys.readouterr().out

    no_password = QUERY.replace("password FROM", "home FROM")
    path = _config_file(conf_dir, driver, dsn, no_password)
    assert main(["check-config", "--config", str(path)]) == 0  # no database asked
    assert main(["check-config", "--config", str(path), "--connect"]) == 78
    err = capsys.readouterr().err
    assert "auth.sql.password_query: returns no password column (it returns user, home)" in err

    path = _config_file(conf_dir, driver, dsn, QUERY.replace("FROM users", "FROM nosuch"))
    assert main(["check-config", "--config", str(path), "--connect"]) == 78
    err = capsys.readouterr().err
    assert "auth.sql.password_query: the database refused it" in err and "nosuch" in err


def test_check_config_connect_to_nothing_names_the_dsn(
    conf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.server import free_port

    path = _config_file(conf_dir, "mysql", f"mysql://nobody@127.0.0.1:{free_port()}/mail", QUERY)
    assert main(["check-config", "--config", str(path), "--connect"]) == 78
    err = capsys.readouterr().err
    assert f"{path}:18: auth.sql.dsn: cannot connect to the mysql database" in err


def test_the_documented_examples_load() -> None:
    """docs/configuration.md's [auth.sql] examples: valid, and their queries are bound."""
    import re

    from mailslot.auth.sqlquery import compile_query

    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", docs, re.DOTALL) if "[auth.sql]" in b]
    assert len(blocks) == 2
    head = BASE.split("[auth]")[0]
    for block in blocks:
        config = loads(head + block, Path("/nonexistent/mailslot.toml"), check_files=False)
        sql = config.auth.sql
        assert sql.password_query is not None
        query = compile_query(sql.password_query, sql.driver)
        assert "'%" not in query.text and query.arguments


def test_mailslot_user_leaves_the_sites_table_alone(
    conf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = conf_dir / "mailslot.toml"
    path.write_text(text(f'password_query = "{QUERY}"\n'))
    assert main(["user", "list", "--config", str(path)]) == 78
    assert "mailslot user does not change" in capsys.readouterr().err
