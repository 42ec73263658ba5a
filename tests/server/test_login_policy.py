"""The session applies auth.policy after a right password: replies and the failure penalty."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

from tests.server.inprocess import InProcessServer
from tests.server.procutil import poll
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire

from mailslot.auth.base import AuthError
from mailslot.metrics import ListenerMetrics, LoginResult, Metrics
from mailslot.server.penalty import LocalPenaltyState

LINES = (
    "closed:{PLAIN}secret::::::nologin\n"
    "moved:{PLAIN}secret::::::nologin reason=Moved nodelay\n"
    "tennet:{PLAIN}secret::::::allow_nets=10.0.0.0/8 nodelay\n"
    "away:{PLAIN}secret::::::userdb_mail=mdbox:~/mdbox\n"
)


def attempt(server: InProcessServer, name: str, password: str = "secret") -> bytes:  # noqa: S107
    with Pop3Wire(*server.address("starttls")) as wire:
        assert wire.command("STLS").startswith(b"+OK")
        wire.start_tls(server.tls_files.client_context())
        assert wire.command(f"USER {name}").startswith(b"+OK")
        return wire.command(f"PASS {password}")


class _Logins(ListenerMetrics):
    def __init__(self, results: list[LoginResult]) -> None:
        self.results = results

    def login(self, mechanism: str, result: LoginResult) -> None:
        self.results.append(result)


class Recorded(Metrics):
    """Metrics that keep the ``result`` of every login, whichever listener."""

    def __init__(self) -> None:
        self.logins: list[LoginResult] = []

    def listener(self, name: str) -> ListenerMetrics:
        return _Logins(self.logins)


def test_refusals_and_the_penalty(tmp_path: Path, tls_files: TlsFiles) -> None:
    server = InProcessServer(tmp_path / "server", tls_files)
    (tmp_path / "server" / "users").write_text(LINES, encoding="utf-8")
    recorded = server.app.metrics = Recorded()
    server.start()
    try:
        penalty = server.app.penalty
        assert isinstance(penalty, LocalPenaltyState)

        def strikes() -> int:
            return penalty.strikes("127.0.0.1")

        assert attempt(server, "closed") == b"-ERR [AUTH] Login disabled for this user\r\n"
        assert strikes() == 1
        # nodelay: forgiven as by a success, not only undelayed.
        assert attempt(server, "moved") == b"-ERR [AUTH] Moved\r\n"
        assert strikes() == 0
        # A wrong password of a nodelay user counts as any other.
        assert attempt(server, "moved", "wrong") == b"-ERR [AUTH] Authentication failed.\r\n"
        assert strikes() == 1
        # A network refusal is a wrong password's reply, and counts, nodelay or not.
        assert attempt(server, "tennet") == b"-ERR [AUTH] Authentication failed.\r\n"
        assert strikes() == 2
        assert attempt(server, "away") == b"-ERR [SYS/PERM] Mailbox unavailable.\r\n"
        assert strikes() == 0  # a right password, as when any maildrop cannot be opened
        # The metric says what the reply says: nologin's text is "disabled", a network
        # refusal is a wrong password's reply and so "failed" (the page has no password
        # oracle the wire has not), [SYS/PERM] is "error".
        assert recorded.logins == ["disabled", "disabled", "failed", "failed", "error"]
    finally:
        server.stop()


class _DownOnce:
    """The passwd-file backend, whose first check fails as a user database that is down."""

    def __init__(self, users: Any) -> None:
        self._users = users
        self.down = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._users, name)

    async def authenticate(self, username: str, password: str, **kwargs: Any) -> Any:
        if self.down:
            self.down = False
            raise AuthError("the user database is down")
        return await self._users.authenticate(username, password, **kwargs)


def test_a_check_without_a_verdict_releases_the_addresss_turn(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    """The user database fails during a check from an address with no failure on record:
    ``-ERR [SYS/TEMP]``, and the check's lease is given back at once, so the next login
    from there goes without waiting for it to run out (30 s here), and without a strike."""
    server = InProcessServer(
        tmp_path / "server",
        tls_files,
        auth={"failure_delay": 30.0, "failure_delay_max": 30.0},
    )
    (tmp_path / "server" / "users").write_text(LINES, encoding="utf-8")
    server.app.users = _DownOnce(server.app.users)
    recorded = server.app.metrics = Recorded()
    server.start()
    try:
        penalty = server.app.penalty
        assert isinstance(penalty, LocalPenaltyState)
        assert attempt(server, "away").startswith(b"-ERR [SYS/TEMP]")
        assert not penalty.in_flight("127.0.0.1")
        assert penalty.strikes("127.0.0.1") == 0
        assert recorded.logins == ["error"]  # the user database's failure, no verdict
    finally:
        server.stop()


def test_an_attempt_whose_client_left_while_it_waited_for_the_penalty_is_aborted(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    """A wrong password puts 127.0.0.1 on the schedule; the next attempt, from another
    connection at once, waits for its slot, and its client closes the connection without
    waiting (a reset): no password is checked, and the login is counted ``aborted``, not
    ``failed``."""
    server = InProcessServer(
        tmp_path / "server",
        tls_files,
        auth={
            "failure_delay": 2.0,
            "failure_delay_max": 2.0,
            "allow_plaintext_without_tls": True,
        },
    )
    recorded = server.app.metrics = Recorded()
    server.start()
    try:
        penalty = server.app.penalty
        assert isinstance(penalty, LocalPenaltyState)
        host, port = server.address("starttls")
        with Pop3Wire(host, port) as first:
            assert first.command("USER alice").startswith(b"+OK")
            first.send(b"PASS wrong\r\n")  # held 2 s
            poll(lambda: recorded.logins == ["failed"], "the failure")
            with Pop3Wire(host, port) as second:
                assert second.command("USER alice").startswith(b"+OK")
                second.send(b"PASS wrong\r\n")
                # Its check granted (a strike), its slot 2 s away.
                poll(lambda: penalty.strikes("127.0.0.1") == 2, "the second reservation")
                # A reset, not a FIN: over plain TCP a half-closed connection may still
                # read its reply, so only a connection that is gone counts as left.
                second.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            poll(lambda: recorded.logins != ["failed"], "the second outcome")
            assert recorded.logins == ["failed", "aborted"]
    finally:
        server.stop()
