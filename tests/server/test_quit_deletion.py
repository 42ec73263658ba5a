"""QUIT tells the truth about what it deleted (RFC 1939 section 6; issue 15).

An in-process server over real sockets, with the store's one unlink call made to fail (EIO)
for the second of three marked messages, at the first try and at the retry: QUIT answers
``-ERR [SYS/TEMP]`` saying that some messages were not removed, the log says exactly how many
were and that the rest will go at the next login, and the next login lists none of the three.
"""

from __future__ import annotations

import errno
import logging
import os

import pytest
from tests.server.conftest import InProcessFactory
from tests.server.test_sessions import tls_wire, wait_for_log
from tests.support.maildir import message_files

from mailslot.store import expunge

MESSAGES = [b"Subject: %d\n\nmessage %d\n" % (n, n) for n in range(1, 4)]


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_quit_whose_unlink_fails_on_the_second_of_three_says_so_and_finishes_later(
    inprocess: InProcessFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess()
    stored = server.builder().add_all(MESSAGES, folder="cur")
    second = stored[1].base
    failures: list[str] = []

    def unlink(name: str, *, dir_fd: int) -> None:
        if name.startswith(second) and len(failures) < 2:  # the first try and the retry
            failures.append(name)
            raise OSError(errno.EIO, "Input/output error")
        os.unlink(name, dir_fd=dir_fd)

    monkeypatch.setattr(expunge, "_unlink", unlink)
    with tls_wire(server, mode) as wire:
        wire.login("alice", server.password())
        for n in (1, 2, 3):
            assert wire.command(f"DELE {n}").startswith(b"+OK")
        assert wire.command("QUIT") == b"-ERR [SYS/TEMP] Some marked messages were not removed.\r\n"
        assert wire.read_until_eof() == b""
    assert len(failures) == 2
    (line,) = wait_for_log(caplog, "deletion incomplete")
    assert "2 of 3 messages deleted, the rest will be deleted at next login" in line
    assert not [r for r in caplog.records if "nothing deleted" in r.getMessage()]
    # Until the next login only the one that failed is left, and the journal that names it.
    assert set(message_files(server.maildir())) == {second}
    assert (server.maildir() / expunge.JOURNAL).exists()

    for _ in range(2):  # the next login finishes it; nothing comes back after that either
        with tls_wire(server, mode) as wire:
            wire.login("alice", server.password())
            assert wire.command("STAT") == b"+OK 0 0\r\n"
            assert wire.command("QUIT").startswith(b"+OK")
        assert message_files(server.maildir()) == {}
        assert not (server.maildir() / expunge.JOURNAL).exists()


def test_quit_that_deletes_everything_says_ok_and_logs_the_count(
    inprocess: InProcessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot")
    server = inprocess()
    server.builder().add_all(MESSAGES, folder="cur")
    with tls_wire(server) as wire:
        wire.login("alice", server.password())
        for n in (1, 2, 3):
            assert wire.command(f"DELE {n}").startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
    assert wait_for_log(caplog, "deleted 3 messages")
    assert message_files(server.maildir()) == {}
