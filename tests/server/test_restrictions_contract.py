"""Dovecot's passdb restrictions (auth.restrictions) through a session, one contract for every
backend that holds them: the passwd-file's extra fields, the SQL passdb's columns (on a
real PostgreSQL and a real MariaDB) and a real Dovecot's auth service holding the same
passwd-file (``backend = "dovecot"``) give the same replies and the same failure penalty.

The users and their fields are written once, below, and turned into each backend's form.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.auth.conftest import PASSWORDS, STORED, sql_authenticator
from tests.server.inprocess import InProcessServer
from tests.server.test_login_policy import Recorded, attempt
from tests.support.tls import TlsFiles

from mailslot.auth.dovecot import DovecotAuthenticator
from mailslot.server.penalty import LocalPenaltyState

PASSWORD = PASSWORDS["alice"]
# Each user's passdb fields; None: a bare key (nologin, nodelay, proxy take no value).
FIELDS: dict[str, dict[str, str | None]] = {
    "closed": {"nologin": None},
    "moved": {"nologin": None, "reason": "Moved", "nodelay": None},
    "tennet": {"allow_nets": "10.0.0.0/8", "nodelay": None},
    "here": {"allow_nets": "10.0.0.0/8,127.0.0.0/8"},
    "realten": {"allow_real_nets": "10.0.0.0/8"},
    "nets1st": {"nologin": None, "reason": "Moved", "allow_nets": "10.0.0.0/8"},
    "badnets": {"allow_nets": "127.0.0.0/33"},
    "prox": {"proxy": None, "host": "192.0.2.9"},
    "open": {},
}
FAILED = b"-ERR [AUTH] Authentication failed.\r\n"


def passwd_lines(uid: str = "", gid: str = "") -> str:
    """The users as passwd-file lines, their fields from the eighth on."""
    lines = []
    for name, fields in FIELDS.items():
        extra = " ".join(
            key if value is None else f"{key}={value}" for key, value in fields.items()
        )
        lines.append(f"{name}:{STORED['alice']}:{uid}:{gid}::::{extra}\n")
    return "".join(lines)


def password_query() -> str:
    """The users' fields as columns of Dovecot's password_query (any value but NULL sets a
    bare key)."""
    columns = sorted({key for fields in FIELDS.values() for key in fields})
    cases = []
    for column in columns:
        whens = " ".join(
            f"WHEN '{name}' THEN '{fields[column] or 'Y'}'"
            for name, fields in FIELDS.items()
            if column in fields
        )
        cases.append(f"CASE username {whens} END AS {column}")
    selected = ", ".join(cases)
    return f"SELECT username AS user, password, {selected} FROM users WHERE username = '%n'"  # noqa: S608 (the test's own values)


DOVECOT_AUTH = """
auth_failure_delay = 0
service auth {
  unix_listener mailslot-client {
    mode = 0666
  }
}
"""


@pytest.fixture
def dovecot_run(tls_files: TlsFiles) -> Iterator[Path]:
    """A private Dovecot whose passwd-file passdb holds the users; its run directory."""
    from tests.support.dovecot import DovecotServer

    dovecot = DovecotServer(tls_files, [], blocks=DOVECOT_AUTH)
    users = dovecot.directory / "users"
    users.write_text(passwd_lines(str(dovecot.uid), str(dovecot.gid)), encoding="utf-8")
    users.chmod(0o644)
    with dovecot:
        yield dovecot.directory / "run"


@pytest.fixture(
    params=[
        "passwd-file",
        "sql-postgresql",
        "sql-mysql",
        pytest.param("dovecot", marks=pytest.mark.dovecot),
    ]
)
def server(request: pytest.FixtureRequest, tmp_path: Path, tls_files: TlsFiles) -> InProcessServer:
    served = InProcessServer(tmp_path / "server", tls_files)
    served.app.metrics = Recorded()
    if request.param == "passwd-file":
        (tmp_path / "server" / "users").write_text(passwd_lines(), encoding="utf-8")
    elif request.param == "dovecot":
        run = request.getfixturevalue("dovecot_run")
        # Dovecot's auth_failure_delay is 0 here: no 2 s floor before its first failure.
        served.app.users = DovecotAuthenticator(run / "mailslot-client", assumed_delay=0.0)
    else:
        rows = [(name, "", STORED["alice"], None) for name in FIELDS]
        driver = request.param.removeprefix("sql-")
        served.app.users = sql_authenticator(request, driver, rows, query=password_query())
    served.start()
    request.addfinalizer(served.stop)
    return served


def test_replies_and_the_penalty_are_the_same_for_every_backend(server: InProcessServer) -> None:
    penalty = server.app.penalty
    assert isinstance(penalty, LocalPenaltyState)

    def strikes() -> int:
        return penalty.strikes("127.0.0.1")

    assert attempt(server, "closed", PASSWORD) == b"-ERR [AUTH] Login disabled for this user\r\n"
    assert strikes() == 1
    # nodelay, after a nologin refusal: forgiven as by a success.
    assert attempt(server, "moved", PASSWORD) == b"-ERR [AUTH] Moved\r\n"
    assert strikes() == 0
    assert attempt(server, "moved", "wrong") == FAILED
    assert strikes() == 1
    # A network refusal is a wrong password's reply, and counts, nodelay or not.
    assert attempt(server, "tennet", PASSWORD) == FAILED
    assert strikes() == 2
    assert attempt(server, "realten", PASSWORD) == FAILED
    # Networks are checked before nologin: its reason is not shown from elsewhere.
    assert attempt(server, "nets1st", PASSWORD) == FAILED
    # A malformed list and a field mailslot does not support refuse (fail closed).
    assert attempt(server, "badnets", PASSWORD) == FAILED
    assert attempt(server, "prox", PASSWORD) == FAILED
    assert strikes() == 6
    assert attempt(server, "here", PASSWORD).startswith(b"+OK")
    assert attempt(server, "open", PASSWORD).startswith(b"+OK")
    # mailslot_logins_total's result: what the reply says, whichever backend refused.
    metrics = server.app.metrics
    assert isinstance(metrics, Recorded)
    assert metrics.logins == [
        "disabled",  # closed
        "disabled",  # moved
        *["failed"] * 6,  # moved's wrong password, tennet, realten, nets1st, badnets, prox
        "ok",
        "ok",
    ]


@pytest.mark.dovecot
def test_a_dovecot_referral_is_a_bare_err_and_counted_disabled(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    """``nologin`` with ``host`` from Dovecot's auth service: a referral, as Dovecot's
    pop3-login answers it (no response code), held and counted as a ``nologin``."""
    from tests.support.dovecot import DovecotServer

    dovecot = DovecotServer(
        tls_files,
        [],
        passwd_lines=[
            f"elsewhere:{STORED['alice']}:{{uid}}:{{gid}}::::nologin host=192.0.2.9",
            f"gone:{STORED['alice']}:{{uid}}:{{gid}}::::nologin reason=Gone host=h nodelay",
        ],
        blocks=DOVECOT_AUTH,
    )
    with dovecot:
        served = InProcessServer(tmp_path / "server", tls_files)
        served.app.metrics = Recorded()
        served.app.users = DovecotAuthenticator(
            dovecot.directory / "run" / "mailslot-client", assumed_delay=0.0
        )
        served.start()
        try:
            penalty = served.app.penalty
            assert isinstance(penalty, LocalPenaltyState)
            reply = attempt(served, "elsewhere", PASSWORD)
            assert reply == b"-ERR Try this server instead.\r\n"
            assert penalty.strikes("127.0.0.1") == 1
            assert attempt(served, "gone", PASSWORD) == b"-ERR Gone\r\n"
            assert penalty.strikes("127.0.0.1") == 0  # nodelay: forgiven
            assert attempt(served, "gone", "wrong") == FAILED
            metrics = served.app.metrics
            assert isinstance(metrics, Recorded)
            assert metrics.logins == ["disabled", "disabled", "failed"]
        finally:
            served.stop()
