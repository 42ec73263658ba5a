"""SIGKILL the server around QUIT: afterwards all marked messages are gone or none is.

RFC 1939 section 6 leaves the UPDATE state's atomicity to the server; the store promises
all-or-nothing with recovery at the next open.  The kill lands before QUIT, right after QUIT
was written (the server is somewhere in UPDATE, varied by the number of marked messages), and
after the ``+OK`` (then the deletion must be complete).
"""

from __future__ import annotations

import contextlib

import pytest
from tests.support.maildir import message_files
from tests.support.server import Listener, ServerFactory
from tests.support.wire import ConnectionClosed, Pop3Wire


@pytest.mark.parametrize(
    ("kill_point", "count"),
    [
        ("before-quit", 8),
        ("quit-sent", 8),
        ("quit-sent", 60),
        ("quit-sent", 300),
        ("after-ok", 60),
    ],
)
def test_sigkill_around_quit_deletes_all_marked_or_none(
    mailslot_factory: ServerFactory, kill_point: str, count: int
) -> None:
    server = mailslot_factory(listeners=[Listener("implicit")])
    builder = server.builder("alice")
    messages = [builder.add(b"Subject: %d\n\nmessage %d\n" % (n, n)) for n in range(1, count + 1)]
    marked = {n for n in range(1, count + 1) if n % 3 != 1}
    everything = {m.base for m in messages}
    survivors = {m.base for n, m in enumerate(messages, 1) if n not in marked}
    context = server.tls_files.client_context()

    with Pop3Wire(*server.implicit, tls_context=context) as wire:
        wire.login("alice", server.password("alice"))
        wire.send(b"".join(b"DELE %d\r\n" % n for n in sorted(marked)))
        for _ in marked:
            assert wire.line().startswith(b"+OK")
        if kill_point == "quit-sent":
            wire.send(b"QUIT\r\n")
        elif kill_point == "after-ok":
            assert wire.command("QUIT").startswith(b"+OK")
        server.kill()
        with contextlib.suppress(ConnectionClosed, OSError):
            wire.read_until_eof()

    server.start()
    with Pop3Wire(*server.implicit, tls_context=context) as wire:
        wire.login("alice", server.password("alice"))  # recovery runs when the drop opens
        assert wire.command("UIDL").startswith(b"+OK")
        listed = {line.split()[1].decode() for line in wire.multiline().splitlines()[:-1]}
        wire.command("QUIT")
    on_disk = set(message_files(server.maildir("alice")))
    assert listed == on_disk
    if kill_point == "before-quit":
        assert on_disk == everything
    elif kill_point == "after-ok":
        assert on_disk == survivors
    else:
        assert on_disk in (everything, survivors), (
            f"{len(everything - on_disk)} of {len(marked)} marked messages gone, "
            f"{len(survivors - on_disk)} unmarked gone"
        )
    # Whatever remains is byte-for-byte what was delivered.
    files = message_files(server.maildir("alice"))
    assert all(files[m.base] == m.data for m in messages if m.base in files)
