"""A worker that stops or retires lets an LMTP delivery in progress end, its reply included:
exiting between a delivery and its reply would have the MTA send the message again
(RFC 2033 section 4.2: the reply is what tells it the message was delivered)."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.server.conftest import InProcessFactory
from tests.server.inprocess import InProcessServer
from tests.support.maildir import message_files

from mailslot.config import ListenerConfig, ServerConfig
from mailslot.delivery.agent import DeliveryAgent

LISTENERS = (
    ListenerConfig(address="127.0.0.1", port=0, tls="starttls"),
    ListenerConfig(protocol="lmtp", address="127.0.0.1", port=0),
)


class Gate:
    """Holds every delivery until released; says when the first one has begun."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    held = Gate()
    original = DeliveryAgent.deliver

    async def deliver(self: DeliveryAgent, *args: Any, **kwargs: Any) -> Any:
        held.entered.set()
        await asyncio.to_thread(held.released.wait, 30)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(DeliveryAgent, "deliver", deliver)
    yield held
    held.released.set()


def send_in_background(server: InProcessServer, outcome: dict[str, Any]) -> threading.Thread:
    port = server.app.lmtp_servers[0].sockets[0].getsockname()[1]

    def send() -> None:
        try:
            with smtplib.LMTP("127.0.0.1", port, timeout=30) as lmtp:
                outcome["refused"] = lmtp.sendmail(
                    "s@example.org", ["alice"], b"Subject: held\r\n\r\nbody\r\n"
                )
        except (OSError, smtplib.SMTPException) as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    return sender


@pytest.mark.parametrize("how", ["stop", "retire"])
def test_a_worker_ends_after_the_delivery_in_progress_and_its_reply(
    inprocess: InProcessFactory, gate: Gate, how: str
) -> None:
    server = inprocess(listeners=LISTENERS)
    outcome: dict[str, Any] = {}
    sender = send_in_background(server, outcome)
    assert gate.entered.wait(15)
    ending = asyncio.run_coroutine_threadsafe(getattr(server.app, how)(), server._loop)
    time.sleep(0.3)
    assert not ending.done()  # it waits for the delivery
    gate.released.set()
    ending.result(15)
    sender.join(15)
    assert outcome == {"refused": {}}  # the reply was sent before the worker ended
    assert len(message_files(server.maildir("alice"))) == 1


def test_stop_gives_a_delivery_the_shutdown_timeout_and_says_so(
    inprocess: InProcessFactory, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    server = inprocess(listeners=LISTENERS, server=ServerConfig(shutdown_timeout=0.2))
    outcome: dict[str, Any] = {}
    sender = send_in_background(server, outcome)
    assert gate.entered.wait(15)
    with caplog.at_level(logging.WARNING, "mailslot"):
        server.call(server.app.stop())
    assert "stopping with 1 LMTP deliveries in progress" in caplog.text
    gate.released.set()  # the loop runs on in this test: the delivery ends, later
    sender.join(15)
    assert outcome == {"refused": {}}
