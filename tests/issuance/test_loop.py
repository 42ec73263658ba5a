"""The renewal loop's own failures and the files it writes, without a CA."""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import stat
from pathlib import Path

import pytest
import trustme
from tests.support.server import free_port

from mailslot.config import loads
from mailslot.tls.acme.issuer import AcmeFailure
from mailslot.tls.acme.service import AcmeService, bootstrap, key_access
from mailslot.tls.acme.state import write_atomically


def test_a_responder_port_in_use_is_a_failure_retried_not_the_end(tmp_path: Path) -> None:
    port = free_port()
    config = loads(
        '[[listener]]\nport = 1995\ntls = "implicit"\n'
        f'[tls]\ncertificate = "{tmp_path}/c.pem"\nprivate_key = "{tmp_path}/k.pem"\n'
        '[auth]\npasswd_file = "users"\n'
        f'[acme]\nenabled = true\nstate_directory = "{tmp_path}/state"\n'
        f'http_address = "127.0.0.1"\nhttp_port = {port}\n'
        'directory = "https://127.0.0.1:9/dir"\nretry_initial = 0.05\nretry_max = 0.1\n',
        check_files=False,
    )
    service = AcmeService(config)

    async def scenario() -> int:
        stopping = asyncio.Event()
        with socket.create_server(("127.0.0.1", port)):  # someone else has the port
            task = asyncio.create_task(service.run(stopping))
            while service.failures < 3:  # noqa: ASYNC110  (the loop has no event to give)
                await asyncio.sleep(0.01)  # polling the loop's count
        while service.state.status().get("last_error", "").startswith("cannot answer"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # the port is free: the next round binds it
        stopping.set()
        await task  # ends when asked, never on a failure
        return service.failures

    failures = asyncio.run(scenario())
    assert failures >= 4  # then the CA (a closed port) fails it, as expected
    assert "cannot reach the CA" in service.state.status()["last_error"]


def test_a_replaced_file_keeps_its_mode_and_group_but_never_other_access(tmp_path: Path) -> None:
    key = tmp_path / "privkey.pem"
    key.write_bytes(b"old")
    os.chmod(key, 0o640)
    group = 4242
    if os.geteuid() == 0:
        os.chown(key, 0, group)
    write_atomically(key, b"new", 0o600, private=True)
    assert key.read_bytes() == b"new"
    assert stat.S_IMODE(key.stat().st_mode) == 0o640
    if os.geteuid() == 0:
        assert key.stat().st_gid == group
    os.chmod(key, 0o644)
    write_atomically(key, b"newer", 0o600, private=True)
    assert stat.S_IMODE(key.stat().st_mode) == 0o640  # others' read bit dropped
    fresh = tmp_path / "fresh.pem"
    write_atomically(fresh, b"x", 0o600, private=True)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.pem", "privkey.pem"]


@pytest.mark.parametrize(("workers", "mode", "group_read"), [(1, 0o640, True), (2, 0o600, False)])
def test_a_new_key_is_readable_by_the_lone_worker_that_reloads_it(
    tmp_path: Path, workers: int, mode: int, group_read: bool
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root starts a server that drops to [server] user")
    config = loads(
        '[[listener]]\nport = 1995\ntls = "implicit"\n'
        f'[tls]\ncertificate = "{tmp_path}/c.pem"\nprivate_key = "{tmp_path}/k.pem"\n'
        '[auth]\npasswd_file = "users"\n'
        f'[server]\nuser = "nobody"\nworkers = {workers}\n'
        f'[acme]\nenabled = true\nstate_directory = "{tmp_path}/state"\n',
        check_files=False,
    )
    group = pwd.getpwnam("nobody").pw_gid
    assert key_access(config) == (mode, group if group_read else None)
    assert bootstrap(config)
    key = tmp_path / "k.pem"
    assert stat.S_IMODE(key.stat().st_mode) == mode
    assert key.stat().st_gid == (group if group_read else 0)


def test_a_certificate_that_does_not_fit_is_not_installed(tmp_path: Path) -> None:
    config = loads(
        '[[listener]]\nport = 1995\ntls = "implicit"\n'
        f'[tls]\ncertificate = "{tmp_path}/c.pem"\nprivate_key = "{tmp_path}/k.pem"\n'
        '[auth]\npasswd_file = "users"\n[server]\nhostname = "mail.example.test"\n'
        f'[acme]\nenabled = true\nstate_directory = "{tmp_path}/state"\n',
        check_files=False,
    )
    assert bootstrap(config)
    before = (tmp_path / "c.pem").read_bytes(), (tmp_path / "k.pem").read_bytes()
    ca = trustme.CA()
    right = ca.issue_cert("mail.example.test")
    other = ca.issue_cert("mail.example.test")
    wrong_name = ca.issue_cert("pop.example.test")

    def chain(issued: trustme.LeafCert) -> bytes:
        return b"".join(blob.bytes() for blob in issued.cert_chain_pems)

    class Sends:
        def __init__(self, chain: bytes, key: bytes) -> None:
            self.result = (chain, key)

        def issue(self) -> tuple[bytes, bytes]:
            return self.result

    service = AcmeService(config)
    for sent, reason in (
        ((chain(right), other.private_key_pem.bytes()), "for another key"),
        ((chain(wrong_name), wrong_name.private_key_pem.bytes()), "does not cover"),
        ((b"garbage", right.private_key_pem.bytes()), "does not parse"),
    ):
        service.issuer = Sends(*sent)  # type: ignore[assignment]
        with pytest.raises(AcmeFailure, match=reason):
            asyncio.run(service.renew("test"))
        assert ((tmp_path / "c.pem").read_bytes(), (tmp_path / "k.pem").read_bytes()) == before
    service.issuer = Sends(chain(right), right.private_key_pem.bytes())  # type: ignore[assignment]
    asyncio.run(service.renew("test"))
    assert (tmp_path / "c.pem").read_bytes() == chain(right)
