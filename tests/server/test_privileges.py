"""A root-started ``mailslot serve`` (and ``deliver``) serves as ``[server] user``: real processes.

The server is started as root with ``user = "nobody"``: every worker's /proc status must show
that account's ids and no supplementary group, a delivered message must be that account's file
with mode 0600, POP3 over TLS and SIGHUP reloads must keep working after the drop, and root
without a user must be refused with status 78.
"""

from __future__ import annotations

import grp
import os
import poplib
import pwd
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.support.dropped import (
    USER,
    children,
    proc_ids,
    require_importable_as,
    require_root,
    shared_directory,
)
from tests.support.server import Listener, MailslotServer, wait_for_greeting
from tests.support.tls import TlsFiles, make_tls_files

MESSAGE = b"From: bob@example.org\r\nSubject: dropped\r\n\r\nbody line\r\n"
DEADLINE = 15.0  # seconds; polling for a state, not a threshold
EX_CONFIG = 78


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory ``nobody`` can traverse; the tests here need root and an interpreter that
    ``nobody`` can import mailslot with."""
    require_importable_as(USER)
    with shared_directory() as path:
        yield path


def account() -> tuple[int, int, str]:
    entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid, grp.getgrgid(entry.pw_gid).gr_name


def dropped_server(
    directory: Path, tls_files: TlsFiles, workers: int, *, user: bool = True
) -> MailslotServer:
    """A server configured as an administrator would set one up: the mail root is the
    user's, the passwd-file is root's and readable by the user's group, the TLS key is
    whatever ``tls_files`` made it (root's, 0600, unless the test changes it)."""
    uid, gid, group = account()
    server = MailslotServer(
        directory / "server",
        tls_files,
        listeners=(Listener("implicit"), Listener("none", protocol="lmtp")),
        extra_sections={"server": {"workers": workers, "user": USER, "group": group}},
    )
    os.chown(server.mail_root, uid, gid)
    os.chown(server.passwd_path, 0, gid)
    server.passwd_path.chmod(0o640)
    return server


@contextmanager
def supplementary_groups(groups: list[int]) -> Iterator[None]:
    """Start what is started inside with these supplementary groups, as a root shell or a
    service manager may: the server must clear them."""
    saved = os.getgroups()
    os.setgroups(groups)
    try:
        yield
    finally:
        os.setgroups(saved)


def poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE} s: {what}")
        time.sleep(0.05)


def worker_pids(server: MailslotServer, workers: int) -> list[int]:
    """The workers' pids, once every one has dropped root (a worker forked a moment ago may
    not have yet; one that never drops fails the poll)."""
    assert server.process is not None
    parent = server.process.pid
    pids: list[int] = []

    def dropped() -> bool:
        pids[:] = [parent] if workers == 1 else children(parent)
        return len(pids) == workers and all(proc_ids(pid)["Uid"][0] != 0 for pid in pids)

    poll(dropped, f"{workers} workers running as {USER}")
    return pids


def served_leaf(server: MailslotServer) -> bytes:
    """The DER of the certificate the implicit-TLS listener serves now."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    address, port = server.implicit
    with (
        socket.create_connection((address, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def leaf_of(tls_files: TlsFiles) -> bytes:
    pem = tls_files.certificate.read_text()
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(pem[: pem.index(end) + len(end)])


def lmtp_deliver(server: MailslotServer, user: str = "alice") -> None:
    with smtplib.LMTP(*server.listener("none", protocol="lmtp")) as lmtp:
        assert lmtp.sendmail("bob@example.org", [user], MESSAGE) == {}


def assert_owned(path: Path, mode: int) -> None:
    uid, gid, _ = account()
    info = path.stat()
    assert (info.st_uid, info.st_gid, oct(stat.S_IMODE(info.st_mode))) == (uid, gid, oct(mode))


def pop3_retrieve_and_delete(server: MailslotServer, context: ssl.SSLContext) -> bytes:
    address, port = server.implicit
    pop = poplib.POP3_SSL(address, port, context=context, timeout=10)
    try:
        pop.user("alice")
        pop.pass_(server.password("alice"))
        lines = pop.retr(1)[1]
        pop.dele(1)
    finally:
        pop.quit()
    return b"\r\n".join(lines)


# -- serving ---------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_serve_as_the_user(shared: Path, tls_files: TlsFiles, workers: int) -> None:
    uid, gid, _ = account()
    # The key stays root's and 0600: it is read before the drop.
    assert stat.S_IMODE(tls_files.private_key.stat().st_mode) == 0o600
    assert tls_files.private_key.stat().st_uid == 0
    server = dropped_server(shared, tls_files, workers)
    with supplementary_groups([4, 27]):
        server.start()
    try:
        assert server.process is not None
        if workers > 1:
            assert proc_ids(server.process.pid)["Groups"] == [4, 27]  # what it was given
        for pid in worker_pids(server, workers):
            # Real, effective, saved and filesystem ids; no supplementary group at all.
            assert proc_ids(pid) == {"Uid": [uid] * 4, "Gid": [gid] * 4, "Groups": []}, pid
        if workers > 1:
            # The parent keeps root to bind and to read root's key on SIGHUP; it talks to
            # no client.
            assert proc_ids(server.process.pid)["Uid"] == [0] * 4

        lmtp_deliver(server)
        maildir = server.maildir("alice")
        (delivered,) = (maildir / "new").iterdir()
        assert_owned(delivered, 0o600)
        for directory in (maildir, maildir / "new", maildir / "cur", maildir / "tmp"):
            assert_owned(directory, 0o700)

        body = pop3_retrieve_and_delete(server, tls_files.client_context())
        assert b"Subject: dropped" in body
        assert b"body line" in body
        assert list((maildir / "new").iterdir()) == list((maildir / "cur").iterdir()) == []
    finally:
        server.stop()
    assert "serving as nobody:" in server.log()


def test_lmtp_unix_socket_is_the_users(shared: Path, tls_files: TlsFiles) -> None:
    uid, gid, _ = account()
    server = dropped_server(shared, tls_files, 2)
    run = shared / "run"  # like /run/mailslot: root's directory
    run.mkdir(mode=0o755)
    path = run / "lmtp.sock"
    with server.config_path.open("a", encoding="utf-8") as config:
        config.write(f'[[listener]]\nprotocol = "lmtp"\npath = "{path}"\n')
    with server:
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert (info.st_uid, info.st_gid, oct(stat.S_IMODE(info.st_mode))) == (
            uid,
            gid,
            oct(0o660),
        )
        worker_pids(server, 2)
        with smtplib.LMTP(str(path)) as lmtp:
            assert lmtp.sendmail("bob@example.org", ["alice"], MESSAGE) == {}
        (delivered,) = (server.maildir("alice") / "new").iterdir()
        assert_owned(delivered, 0o600)


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_after_the_drop_serves_the_new_certificate(shared: Path, workers: int) -> None:
    _, gid, _ = account()
    tls = make_tls_files(shared / "tls")
    if workers == 1:
        # No parent keeps root: the worker reads the key as the user on SIGHUP, so the key
        # must be readable by its group (docs/configuration.md, [server]).
        os.chown(tls.private_key, 0, gid)
        tls.private_key.chmod(0o640)
    # With a parent, the key stays root's and 0600.
    with dropped_server(shared, tls, workers) as server:
        worker_pids(server, workers)
        assert "a SIGHUP reload will fail" not in server.log()
        assert served_leaf(server) == leaf_of(tls)
        new = make_tls_files(shared / "new")
        # Written into the files the server names, as certbot's renewal would replace them.
        shutil.copyfile(new.certificate, tls.certificate)
        shutil.copyfile(new.private_key, tls.private_key)
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        poll(lambda: served_leaf(server) == leaf_of(new), "the new certificate served")
        worker_pids(server, workers)  # the new generation has dropped too
        lmtp_deliver(server)
        body = pop3_retrieve_and_delete(server, new.client_context())
        assert b"body line" in body


def test_lone_worker_cannot_reload_a_key_only_root_reads(shared: Path) -> None:
    """The documented limit of ``workers = 1``: the old certificate stays, with a log line."""
    tls = make_tls_files(shared / "tls")  # the key is root's, 0600
    with dropped_server(shared, tls, 1) as server:
        worker_pids(server, 1)
        server.wait_for_log("a SIGHUP reload will fail")
        assert f"{tls.private_key} is not readable by nobody:" in server.log()
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("TLS reload failed")
        assert "Permission denied" in server.log()
        assert served_leaf(server) == leaf_of(tls)


# -- refused and allowed as root -------------------------------------------------------------


def test_root_without_user_is_refused(tmp_path: Path, tls_files: TlsFiles) -> None:
    require_root()
    server = MailslotServer(tmp_path / "server", tls_files, run_as_root=None)
    for command in ("serve", "check-config"):
        result = subprocess.run(
            [sys.executable, "-m", "mailslot", command, "--config", str(server.config_path)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == EX_CONFIG, result
        err = result.stderr.decode()
        assert (
            f"{server.config_path}: server.user: mailslot was started as root without "
            "[server] user" in err
        )
        assert 'run_as_root = "REASON"' in err
        assert result.stdout == b""
    with pytest.raises(TimeoutError):
        wait_for_greeting(*server.implicit, tls_files.client_context(), time.monotonic() + 0.2)


def test_root_with_a_reason_serves_as_root(tmp_path: Path, tls_files: TlsFiles) -> None:
    require_root()
    with MailslotServer(tmp_path / "server", tls_files) as server:  # run_as_root by default
        assert server.process is not None
        assert proc_ids(server.process.pid)["Uid"] == [0] * 4
        assert "serving as root: [server] run_as_root = 'the test suite runs as root'" in (
            server.log()
        )


# -- mailslot deliver ------------------------------------------------------------------------


def deliver(config: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mailslot", "deliver", "--config", str(config), "-u", "alice"],
        input=MESSAGE,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_deliver_as_root_writes_as_the_user(shared: Path, tls_files: TlsFiles) -> None:
    server = dropped_server(shared, tls_files, 1)
    result = deliver(server.config_path)
    assert (result.returncode, result.stderr) == (0, b"")
    maildir = server.maildir("alice")
    (delivered,) = (maildir / "new").iterdir()
    assert_owned(delivered, 0o600)
    for directory in (maildir, maildir / "new", maildir / "cur", maildir / "tmp"):
        assert_owned(directory, 0o700)


def test_deliver_as_root_without_user_is_refused(tmp_path: Path, tls_files: TlsFiles) -> None:
    require_root()
    server = MailslotServer(tmp_path / "server", tls_files, run_as_root=None)
    result = deliver(server.config_path)
    assert result.returncode == EX_CONFIG
    assert b"server.user: mailslot was started as root without [server] user" in result.stderr
    assert not server.maildir("alice").exists()


@pytest.mark.parametrize("setgid", [False, True])
def test_lmtp_unix_socket_group(tmp_path: Path, setgid: bool) -> None:
    """The user's group, or the directory's when it is setgid: the way to let the MTA's
    group connect without putting the MTA into the server's group (docs/delivery.md)."""
    require_root()
    from mailslot.config import ListenerConfig
    from mailslot.delivery.lmtp import lmtp_socket

    uid, gid, _ = account()
    mta_gid = gid + 4242  # a group of the directory's own; it need not have a name
    run = tmp_path / "run"
    run.mkdir()
    os.chown(run, 0, mta_gid)
    run.chmod(0o2750 if setgid else 0o750)
    path = run / "lmtp.sock"
    with lmtp_socket(ListenerConfig(protocol="lmtp", path=path), (uid, gid)):
        info = path.stat()
    expected = mta_gid if setgid else gid
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, expected, 0o660)


def test_check_config_as_root_needs_a_passwd_file_the_user_reads(
    shared: Path, tls_files: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailslot.cli import main

    _, gid, group = account()
    server = dropped_server(shared, tls_files, 2)
    passwd = server.passwd_path
    os.chown(passwd, 0, 0)
    passwd.chmod(0o600)
    for command in ("check-config", "serve"):
        assert main([command, "--config", str(server.config_path)]) == EX_CONFIG
        err = capsys.readouterr().err
        assert f"auth.passwd_file: {passwd} is not readable by {USER}:{group}" in err
        assert f"chmod 0640 {passwd}" in err
    os.chown(passwd, 0, gid)
    passwd.chmod(0o640)
    assert main(["check-config", "--config", str(server.config_path)]) == 0
