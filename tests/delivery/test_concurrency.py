"""Delivery while POP3 sessions come and go: nothing lost, nothing doubled.

LMTP deliveries run back to back from one client while, on the server's event loop, a task
keeps opening the maildrop (RFC 1939 section 8's exclusive lock), deleting every other message
of its snapshot and closing.  Delivery never takes that lock, so both go on concurrently.  At
the end every message that got a 250 was either deleted by some session or is still there, and
exactly once.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter

from mailslot.store.base import Store

from .conftest import transaction

COUNT = 150
_ID = re.compile(rb"Message-ID: <(\d+)@test>")


def message(number: int) -> bytes:
    return f"Message-ID: <{number}@test>\r\nSubject: {number}\r\n\r\nbody {number}\r\n".encode()


async def read_id(maildrop, info) -> int:
    data = b"".join([chunk async for chunk in maildrop.read(info)])
    found = _ID.search(data)
    assert found is not None, data
    return int(found.group(1))


async def churn(store: Store, stop: threading.Event, deleted: list[int]) -> int:
    sessions = 0
    while not stop.is_set():
        maildrop = await store.open("alice")
        try:
            victims = list(maildrop.messages)[::2]
            ids = [await read_id(maildrop, info) for info in victims]
            await maildrop.delete(victims)
            deleted.extend(ids)  # only once delete() returned: the removal is durable
        finally:
            await maildrop.close()
        sessions += 1
        await asyncio.sleep(0)  # yield to the LMTP sessions on the same loop
    return sessions


def test_deliveries_during_open_delete_close_cycles(lmtp_factory, loop_thread):
    server = lmtp_factory()
    stop = threading.Event()
    deleted: list[int] = []
    churner = asyncio.run_coroutine_threadsafe(churn(server.store, stop, deleted), loop_thread.loop)
    accepted: list[int] = []
    client = server.client()
    try:
        for number in range(COUNT):
            result = transaction(client, "b@x.test", ["alice"], message(number))
            if result.data[0][0] == 250:
                accepted.append(number)
    finally:
        client.quit()
        stop.set()
    sessions = churner.result(60)

    async def remaining() -> list[int]:
        maildrop = await server.store.open("alice")
        try:
            return [await read_id(maildrop, info) for info in maildrop.messages]
        finally:
            await maildrop.close()

    left = loop_thread.run(remaining())
    assert accepted == list(range(COUNT))
    assert sessions > 1 and deleted, (sessions, len(deleted))
    seen = Counter(deleted) + Counter(left)
    assert sorted(seen) == accepted
    assert all(count == 1 for count in seen.values()), seen.most_common(3)
    assert server.names("alice", "tmp") == []
