"""poplib sessions for tests: connect over implicit TLS or STLS, log in, share the corpus."""

from __future__ import annotations

import poplib
import time
from dataclasses import dataclass

from tests.support.maildir import StoredMessage
from tests.support.server import MailslotServer

MODES = ("stls", "implicit")
IN_USE_DEADLINE = 15.0


@dataclass
class Corpus:
    server: MailslotServer
    user: str
    password: str
    messages: list[StoredMessage]
    names: list[str]  # SAMPLE_MESSAGES keys, in message-number order


def pop3_connect(server: MailslotServer, mode: str) -> poplib.POP3:
    """poplib over implicit TLS (POP3_SSL) or plain + STLS, verifying with the test CA."""
    context = server.tls_files.client_context()
    if mode == "implicit":
        host, port = server.implicit
        return poplib.POP3_SSL(host, port, context=context, timeout=30)
    host, port = server.starttls
    client = poplib.POP3(host, port, timeout=30)
    client.stls(context)
    return client


def pop3_login(server: MailslotServer, mode: str, user: str = "alice") -> poplib.POP3:
    """Log in; while a previous session of ``user`` is still being torn down, retry.

    The retry is polling for the server to notice a dropped connection and release the
    maildrop lock; anything but ``[IN-USE]`` fails at once.
    """
    deadline = time.monotonic() + IN_USE_DEADLINE
    while True:
        client = pop3_connect(server, mode)
        client.user(user)
        try:
            client.pass_(server.password(user))
            return client
        except poplib.error_proto as exc:
            client.close()
            if b"[IN-USE]" not in exc.args[0] or time.monotonic() > deadline:
                raise
        time.sleep(0.05)
