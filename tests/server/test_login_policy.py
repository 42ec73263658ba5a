"""The session applies auth.policy after a right password: replies and the failure penalty."""

from __future__ import annotations

from pathlib import Path

from tests.server.inprocess import InProcessServer
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire

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


def test_refusals_and_the_penalty(tmp_path: Path, tls_files: TlsFiles) -> None:
    server = InProcessServer(tmp_path / "server", tls_files)
    (tmp_path / "server" / "users").write_text(LINES, encoding="utf-8")
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
    finally:
        server.stop()
