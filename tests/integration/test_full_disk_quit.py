"""On a full disk, DELE + QUIT frees the space and answers ``+OK`` (issue 15).

The expunge journal needs a block that a full disk does not have; the store then unlinks the
marked messages directly (see :mod:`mailslot.store.expunge`).  A real full file system: a
1 MiB tmpfs mounted over the server's mail root, filled to the last byte, over real sockets
with poplib.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.maildir import MaildirBuilder, message_files
from tests.support.popclient import pop3_login
from tests.support.server import MailslotServer, ServerFactory


def _free(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


@contextlib.contextmanager
def _tmpfs(directory: Path, size: str) -> Iterator[None]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must run as root to mount the tmpfs this test fills")
        pytest.skip("mounting a tmpfs needs root (run as root, as CI does)")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True
    )
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def _fill(builder: MaildirBuilder, filler: Path) -> int:
    """Add messages until the disk is full, then fill the last bytes; return how many."""
    count = 0
    body = b"Subject: filler\n\n" + b"x" * 60_000 + b"\n"
    while True:
        try:
            builder.add(body, folder="cur", flags="S")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            break
        count += 1
    for leftover in (builder.path / "tmp").iterdir():  # the message that did not fit
        leftover.unlink()
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (4096, 1):
            while True:
                try:
                    os.write(fd, b"f" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return count


def test_dele_and_quit_on_a_full_disk_frees_the_space_and_says_ok(
    mailslot_factory: ServerFactory,
) -> None:
    server: MailslotServer = mailslot_factory(start=False)
    with _tmpfs(server.mail_root, "1m"):
        try:
            builder = MaildirBuilder(server.maildir("alice"))
            count = _fill(builder, server.maildir("alice") / ".filler")
            assert count >= 5
            # Not even the journal fits now.
            with pytest.raises(OSError) as full:
                (server.maildir("alice") / "probe").write_bytes(b"x" * 4096)
            assert full.value.errno == errno.ENOSPC
            (server.maildir("alice") / "probe").unlink(missing_ok=True)
            free_before = _free(server.mail_root)
            server.start()

            client = pop3_login(server, "implicit")
            assert client.stat()[0] == count
            for n in range(1, count + 1):
                client.dele(n)
            assert client.quit().startswith(b"+OK")

            assert message_files(server.maildir("alice")) == {}
            assert _free(server.mail_root) >= free_before + count * 60_000
            client = pop3_login(server, "implicit")
            assert client.stat() == (0, 0)  # nothing resurrected
            client.quit()
        finally:
            server.stop()
