"""Automatic reload when a certificate or key file changes (:mod:`mailslot.tls.watch`).

The watch's logic runs on a fake clock and fake ``stat`` results; then ``mailslot serve``
(one worker, and a supervisor with two) sees a certbot-style renewal (``live/`` symlinks
switched to new files in ``archive/``) without any signal, a half-done renewal is refused
and said once, and an established session goes on.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from tests.support.maildir import message_files
from tests.support.server import MailslotServer
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire
from tests.tls.certmaker import Issued, Pki, pki, write

from mailslot.tls.watch import FileWatch

POLL_DEADLINE = 30.0  # polling for the server, not a timing threshold


class FakeFiles:
    """``stat`` results by path, changed by the test."""

    def __init__(self, *paths: str) -> None:
        self.stats: dict[Path, tuple[int, int, int, int, int] | None] = {
            Path(p): (1, n, 100, 1, 1) for n, p in enumerate(paths)
        }

    def stat(self, path: Path) -> tuple[int, int, int, int, int] | None:
        return self.stats[path]

    def touch(self, path: str, inode: int) -> None:
        self.stats[Path(path)] = (1, inode, 200, inode, inode)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(files: FakeFiles, clock: Clock) -> FileWatch:
    return FileWatch(list(files.stats), 5.0, clock=clock, stat=files.stat)


def test_a_look_is_due_every_interval() -> None:
    files, clock = FakeFiles("cert", "key"), Clock()
    watch = _watch(files, clock)
    assert not watch.due()
    clock.now += 4.9
    assert not watch.due()
    assert watch.until_due() == pytest.approx(0.1)
    clock.now += 0.1
    assert watch.due()
    assert not watch.due()  # the next one is an interval later
    clock.now += 5.0
    assert watch.due()


def test_unchanged_files_are_not_reloaded() -> None:
    files, clock = FakeFiles("cert", "key"), Clock()
    watch = _watch(files, clock)
    for _ in range(3):
        clock.now += 5
        assert watch.poll() is None


def test_a_change_is_reloaded_once_it_has_stayed_for_one_look() -> None:
    files, clock = FakeFiles("cert", "key"), Clock()
    watch = _watch(files, clock)
    files.touch("cert", 10)
    assert watch.poll() is None  # just changed: the key may follow
    files.touch("key", 11)
    assert watch.poll() is None  # changed again since the last look
    signature = watch.poll()
    assert signature is not None  # the same at two looks: reload
    watch.loaded(signature)
    assert watch.poll() is None
    assert watch.poll() is None


def test_a_refused_renewal_is_tried_once_then_again_when_the_files_change() -> None:
    files, clock = FakeFiles("cert", "key"), Clock()
    watch = _watch(files, clock)
    files.touch("cert", 10)  # a new chain, the old key: the reload's checks refuse it
    watch.poll()
    signature = watch.poll()
    assert signature is not None
    watch.loaded(signature)  # tried and refused (logged once by the caller)
    for _ in range(5):
        assert watch.poll() is None  # not tried (nor logged) again
    files.touch("key", 11)
    assert watch.poll() is None
    assert watch.poll() is not None


def test_a_file_missing_for_a_moment_is_a_change() -> None:
    files, clock = FakeFiles("cert", "key"), Clock()
    watch = _watch(files, clock)
    files.stats[Path("cert")] = None
    assert watch.poll() is None
    assert watch.poll() == (None, (1, 1, 100, 1, 1))


def test_a_reload_by_sighup_is_not_repeated_by_the_watch() -> None:
    files, clock = FakeFiles("cert", "key"), Clock()
    watch = _watch(files, clock)
    files.touch("cert", 10)
    files.touch("key", 11)
    watch.loaded(watch.signature())  # what a SIGHUP reload does before it reads the files
    assert watch.poll() is None
    assert watch.poll() is None


# -- a real server -------------------------------------------------------------------------


class Live:
    """certbot's layout: ``live/`` symlinks into ``archive/``, switched one at a time with
    an atomic rename of a new symlink, as certbot does."""

    def __init__(self, directory: Path, ca: Pki) -> None:
        self.ca = ca
        self.archive = directory / "archive"
        self.live = directory / "live"
        self.live.mkdir(parents=True)
        self.version = 0
        self.certificate = self.live / "fullchain.pem"
        self.private_key = self.live / "privkey.pem"
        self.current = self.renew()
        self.switch("fullchain")
        self.switch("privkey")

    def renew(self) -> Issued:
        self.version += 1
        leaf = self.ca.leaf("localhost")
        write(self.archive, leaf, self.ca.intermediate, stem=f"{self.version}-")
        return leaf

    def switch(self, which: str) -> None:
        temporary = self.live / f".{which}.new"
        temporary.symlink_to(f"../archive/{self.version}-{which}.pem")
        os.replace(temporary, self.live / f"{which}.pem")


def _served_serial(server: MailslotServer, ca: Pki) -> int:
    from cryptography import x509

    host, port = server.implicit
    with (
        socket.create_connection((host, port), timeout=30) as raw,
        ca.client().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"QUIT\r\n")
        return x509.load_der_x509_certificate(der).serial_number


def _poll(condition: object, what: str) -> None:
    end = time.monotonic() + POLL_DEADLINE
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_renewal_on_disk_is_served_without_a_signal(tmp_path: Path, workers: int) -> None:
    ca = pki(tmp_path / "pki")
    live = Live(tmp_path / "letsencrypt", ca)
    server = MailslotServer(
        tmp_path / "server",
        TlsFiles(ca.ca_pem, live.certificate, live.private_key),
        extra_sections={"server": {"workers": workers}},
    )
    text = server.config_path.read_text()
    server.config_path.write_text(text.replace("[tls]\n", "[tls]\nreload_check_interval = 0.2\n"))
    server.builder("alice").add_all([b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n"])
    first = live.current
    with server:
        assert _served_serial(server, ca) == first.serial
        host, port = server.implicit
        with Pop3Wire(host, port, tls_context=ca.client()) as old:
            old.login("alice", server.password("alice"))
            # Half a renewal: the new chain, the old key.  Refused, said once, old one served.
            renewed = live.renew()
            live.switch("fullchain")
            server.wait_for_log("TLS reload failed", deadline=POLL_DEADLINE)
            assert _served_serial(server, ca) == first.serial
            # The key follows: the new certificate is served to new connections.
            live.switch("privkey")
            _poll(lambda: _served_serial(server, ca) == renewed.serial, "the new certificate")
            log = server.log()
            assert log.count("TLS reload failed") == 1, log
            assert "does not belong to the certificate" in log
            # With two workers the parent says it once it has forked the new ones, which may
            # serve before it does.
            reloaded = "the certificate files changed: TLS certificate reloaded"
            assert len(server.wait_for_log(reloaded)) == 1
            # The session opened before goes on over its old TLS state.
            assert old.command("STAT").startswith(b"+OK 2 ")
            assert old.command("RETR 1").startswith(b"+OK")
            assert old.multiline().endswith(b"first\r\n.\r\n")
            assert old.command("DELE 1").startswith(b"+OK")
            assert old.command("QUIT").startswith(b"+OK")
        assert len(message_files(server.maildir("alice"))) == 1
        assert server.running


def test_reload_check_interval_zero_watches_nothing(tmp_path: Path) -> None:
    from mailslot.config import loads
    from mailslot.server.runner import file_watch

    base = (
        '[[listener]]\nport = 995\ntls = "implicit"\n[auth]\npasswd_file = "users"\n'
        '[tls]\ncertificate = "c"\nprivate_key = "k"\n'
    )
    assert file_watch(loads(base + "reload_check_interval = 0\n", check_files=False)) is None
    watch = file_watch(loads(base, check_files=False))
    assert watch is not None and watch.interval == 5.0
    assert [p.name for p in watch.paths] == ["c", "k"]
