"""The Dovecot auth client's replies, against a scripted auth server on a Unix socket.

The real Dovecot is in the contract suite (tests/auth/conftest.py) and in
tests/integration/test_dovecot_auth.py; here are the replies a passwd-file Dovecot does not
give on demand: ``FAIL ... temp``, ``code=temp_fail``, a ``FAIL`` with a reason or a code,
``OK ... proxy``, a handshake without PLAIN, a wrong major version, a missing socket, and what
the AUTH line carries.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from mailslot.auth.base import (
    AuthenticationFailed,
    LoginSource,
    Refused,
    TemporaryAuthFailure,
    User,
    login_source,
)
from mailslot.auth.dovecot import (
    DovecotAuthenticator,
    options,
    parse_line,
    refusal,
    tab_escape,
    tab_unescape,
)
from mailslot.auth.restrictions import Refusal

HANDSHAKE = (
    b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\n"
    b"SPID\t1\nCUID\t7\nCOOKIE\tab\nDONE\n"
)

Reply = Callable[[list[str]], bytes]


async def _serve(
    path: Path, reply: Reply, seen: list[list[str]], handshake: bytes
) -> asyncio.Server:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(handshake)
        if b"DONE" not in handshake:
            writer.close()  # gone in the middle of the handshake
            return
        while line := await reader.readline():
            fields = parse_line(line.rstrip(b"\n"))
            seen.append(fields)
            if fields[0] == "AUTH":
                writer.write(reply(fields))
        writer.close()

    return await asyncio.start_unix_server(client, str(path))


def _attempt(
    tmp_path: Path,
    reply: Reply,
    *,
    user: str = "alice",
    handshake: bytes = HANDSHAKE,
    source: LoginSource | None = None,
) -> tuple[User | BaseException, list[list[str]]]:
    seen: list[list[str]] = []
    path = tmp_path / "auth-client"

    async def main() -> User | BaseException:
        server = await _serve(path, reply, seen, handshake)
        auth = DovecotAuthenticator(path, timeout=5, assumed_delay=0.0)
        try:
            if source is not None:
                login_source.set(source)
            return await auth.authenticate(user, "pass\tword")
        except Exception as exc:
            return exc
        finally:
            await auth.aclose()
            server.close()

    return asyncio.run(main()), seen


def test_the_auth_line_carries_the_login(tmp_path: Path) -> None:
    source = LoginSource(remote=("192.0.2.7", 40000), local=("198.51.100.1", 995), secured=True)
    result, seen = _attempt(tmp_path, lambda f: f"OK\t{f[1]}\tuser=alice\n".encode(), source=source)
    assert result == User("alice")
    assert seen[0] == ["VERSION", "1", "2"]
    assert seen[1][0] == "CPID"
    auth = seen[2]
    assert auth[:3] == ["AUTH", auth[1], "PLAIN"]
    assert {"service=pop3", "no-penalty", "secured", "rip=192.0.2.7", "rport=40000"} <= set(auth)
    assert {"lip=198.51.100.1", "lport=995"} <= set(auth)
    response = next(f for f in auth if f.startswith("resp="))
    assert base64.b64decode(response[5:]) == b"\x00alice\x00pass\tword"


def test_the_canonical_name_comes_from_dovecot(tmp_path: Path) -> None:
    result, _ = _attempt(tmp_path, lambda f: f"OK\t{f[1]}\tuser=alice\n".encode(), user="Alice")
    assert result == User("alice")


@pytest.mark.parametrize("extra", ["temp", "code=temp_fail"])
def test_a_temporary_failure_is_sys_temp(tmp_path: Path, extra: str) -> None:
    result, _ = _attempt(tmp_path, lambda f: f"FAIL\t{f[1]}\tuser=alice\t{extra}\n".encode())
    assert isinstance(result, TemporaryAuthFailure)


@pytest.mark.parametrize(
    "line",
    [
        "FAIL\t{}\tuser=alice",
        "FAIL\t{}",
        "CONT\t{}\t",
        # A FAIL does not say the password was right: its reason is never the reply.
        "FAIL\t{}\tuser=alice\treason=Account expired",
        "FAIL\t{}\tuser=alice\tnologin\treason=gone\tnodelay",
        "FAIL\t{}\tuser=alice\tcode=pass_expired\treason=Password expired",
        "FAIL\t{}\tuser=alice\tcode=user_disabled",
    ],
)
def test_failures_are_a_wrong_passwords(tmp_path: Path, line: str) -> None:
    result, _ = _attempt(tmp_path, lambda f: (line.format(f[1]) + "\n").encode())
    assert type(result) is AuthenticationFailed
    assert result.args == ()


@pytest.mark.parametrize(
    ("line", "text", "delay"),
    [
        ("OK\t{}\tuser=alice\tnologin", "Login disabled for this user", True),
        ("OK\t{}\tuser=alice\tnologin\treason=Moved", "Moved", True),
        ("OK\t{}\tuser=alice\tnologin\treason=Moved\tnodelay", "Moved", False),
        ("OK\t{}\tuser=alice\treason=x\x01t\tnologin", "x?", True),  # a tab: not sent
        ("OK\t{}\tuser=alice\tproxy\thost=192.0.2.9", None, True),
        ("OK\t{}\tuser=alice\tproxy_maybe\thost=192.0.2.9\tnologin", None, True),
    ],
)
def test_a_right_password_refused_is_answered_as_dovecot_does(
    tmp_path: Path, line: str, text: str | None, delay: bool
) -> None:
    result, _ = _attempt(tmp_path, lambda f: (line.format(f[1]) + "\n").encode())
    assert isinstance(result, Refused)
    assert (result.refusal.kind, result.refusal.text, result.refusal.delay) == ("auth", text, delay)


@pytest.mark.parametrize(
    ("fields", "text"),
    [(["nologin", "host=192.0.2.9"], None), (["nologin", "reason=Gone", "host=h.example"], "Gone")],
)
def test_nologin_with_a_host_is_a_referral(fields: list[str], text: str | None) -> None:
    """Dovecot's pop3-login: ``-ERR <reason>`` or ``-ERR Try this server instead.``"""
    refused = refusal(options(fields))
    assert refused is not None
    assert (refused.kind, refused.text, refused.delay) == ("referral", text, True)


@pytest.mark.parametrize(
    "fields",
    [["user=alice"], ["user=alice", "reason=Why"], ["user=alice", "nodelay"], ["host=192.0.2.9"]],
)
def test_other_ok_fields_log_in(fields: list[str]) -> None:
    """As Dovecot's pop3-login: a reason without nologin, nodelay or a host alone change
    nothing for a right password."""
    assert refusal(options(fields)) is None


def test_nologin_is_the_passwd_files_refusal() -> None:
    assert refusal(options(["nologin", "reason=Moved"])) == Refusal(
        "auth", "Moved", "nologin", True, "nologin"
    )


def test_an_unusable_name_from_dovecot_is_refused(tmp_path: Path) -> None:
    result, _ = _attempt(tmp_path, lambda f: f"OK\t{f[1]}\tuser=../etc\n".encode())
    assert isinstance(result, AuthenticationFailed)


def test_an_invalid_name_never_reaches_dovecot(tmp_path: Path) -> None:
    result, seen = _attempt(tmp_path, lambda f: b"", user="../x")
    assert isinstance(result, AuthenticationFailed)
    assert seen == []


@pytest.mark.parametrize(
    "handshake",
    [
        b"VERSION\t1\t2\nMECH\tLOGIN\nDONE\n",  # no PLAIN
        b"VERSION\t2\t0\nMECH\tPLAIN\nDONE\n",  # another major version
        b"VERSION\t1\t2\nMECH\tPLAIN\n",  # closed before DONE
    ],
)
def test_a_broken_handshake_is_sys_temp(
    tmp_path: Path, handshake: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "mailslot.auth.dovecot"):
        result, _ = _attempt(tmp_path, lambda f: b"", handshake=handshake)
    assert isinstance(result, TemporaryAuthFailure)
    assert "dovecot auth unavailable: handshake" in caplog.text


def test_a_missing_socket_is_sys_temp(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    auth = DovecotAuthenticator(tmp_path / "nothing-here")
    with (
        caplog.at_level(logging.WARNING, "mailslot.auth.dovecot"),
        pytest.raises(TemporaryAuthFailure),
    ):
        asyncio.run(auth.authenticate("alice", "secret"))
    assert "cannot connect to" in caplog.text
    assert "secret" not in caplog.text


def test_lookup_without_a_userdb_socket_is_none() -> None:
    assert asyncio.run(DovecotAuthenticator(Path("/nonexistent")).lookup("alice")) is None


@pytest.mark.parametrize("value", ["plain", "a\tb", "x\ny\rz", "\x01\x00", "ü\t\x01t"])
def test_tab_escaping_round_trips(value: str) -> None:
    escaped = tab_escape(value)
    assert "\t" not in escaped and "\n" not in escaped
    assert tab_unescape(escaped) == value


def test_config_reads_the_dovecot_table(tmp_path: Path) -> None:
    from mailslot.config import ConfigError, loads

    text = (
        '[[listener]]\ntls = "none"\nport = 1110\n[auth]\nbackend = "dovecot"\n'
        '[auth.dovecot]\nsocket = "/run/dovecot/mailslot-auth"\nservice = "pop3s"\n'
    )
    config = loads(text, tmp_path / "mailslot.toml")
    assert config.auth.backend == "dovecot"
    assert config.auth.dovecot.socket == Path("/run/dovecot/mailslot-auth")
    assert config.auth.dovecot.service == "pop3s"
    assert config.auth.dovecot.userdb_socket is None
    with pytest.raises(ConfigError, match=r"auth\.dovecot\.sockett: unknown key"):
        loads(text.replace("socket =", "sockett ="), tmp_path / "mailslot.toml")


def test_a_name_refused_here_waits_as_long_as_dovecots_last_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The floor follows Dovecot's recent failure times: an invalid name, never sent, is
    answered no sooner than the slowest of them (a fake clock: no real waiting)."""
    path = tmp_path / "auth-client"
    waits: list[float] = []

    async def fake_answer(started: float, floor: float) -> None:
        waits.append(floor)

    async def main() -> None:
        async def slow_fail(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(HANDSHAKE)
            while line := await reader.readline():
                fields = parse_line(line.rstrip(b"\n"))
                if fields[0] == "AUTH":
                    await asyncio.sleep(0.05)  # Dovecot's own failure delay, shortened
                    writer.write(f"FAIL\t{fields[1]}\tuser=alice\n".encode())

        server = await asyncio.start_unix_server(slow_fail, str(path))
        auth = DovecotAuthenticator(path, failure_floor=0.01)
        try:
            with pytest.raises(AuthenticationFailed):
                await auth.authenticate("alice", "wrong")
            with pytest.raises(AuthenticationFailed):
                await auth.authenticate("../x", "wrong")
        finally:
            await auth.aclose()
            server.close()

    monkeypatch.setattr("mailslot.auth.dovecot.answer_failure", fake_answer)
    asyncio.run(main())
    assert waits[0] >= 0.05
    assert waits[1] == waits[0]


def test_before_any_failure_an_invalid_name_waits_dovecots_default_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []

    async def fake_answer(started: float, floor: float) -> None:
        waits.append(floor)

    monkeypatch.setattr("mailslot.auth.dovecot.answer_failure", fake_answer)
    auth = DovecotAuthenticator(tmp_path / "never-asked")
    with pytest.raises(AuthenticationFailed):
        asyncio.run(auth.authenticate("../x", "secret"))
    assert waits == [2.0]
