"""Delivery rate: messages per second into one mailbox over LMTP (RFC 2033).

Starts mailslot's LMTP listener in-process on 127.0.0.1 over a real Maildir (fsync on), then
delivers ``--count`` messages of each ``--size`` back to back from ``--clients`` concurrent
``smtplib.LMTP`` connections, one recipient per transaction, all to the same user.

    PYTHONPATH=src python benchmarks/delivery_rate.py --count 500 --size 2048 --size 102400
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import shutil
import smtplib
import tempfile
import threading
import time

from mailslot.auth.memory import MemoryAuthenticator
from mailslot.config import DeliveryConfig, ListenerConfig
from mailslot.delivery.lmtp import start_lmtp_server
from mailslot.store.maildir import MaildirStore


def make_message(size: int) -> bytes:
    header = b"From: bench@example.org\r\nTo: bench@example.test\r\nSubject: rate\r\n\r\n"
    line = b"x" * 74 + b"\r\n"
    body = line * max(0, (size - len(header)) // len(line))
    return header + body


def send(port: int, message: bytes, count: int) -> None:
    with smtplib.LMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("bench.test")
        for _ in range(count):
            client.sendmail("bench@example.org", ["bench@example.test"], message)


def measure(port: int, size: int, count: int, clients: int) -> float:
    message = make_message(size)
    share = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(send, port, message, n) for n in share]:
            future.result()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, action="append", help="octets (repeatable)")
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    sizes = args.size or [2048, 102400]

    root = tempfile.mkdtemp(prefix="mailslot-bench-")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        store = MaildirStore(f"{root}/{{user}}/Maildir")
        users = MemoryAuthenticator({"bench": "unused"})
        listener = ListenerConfig(protocol="lmtp", address="127.0.0.1", port=0, tls="none")
        server = asyncio.run_coroutine_threadsafe(
            start_lmtp_server(listener, DeliveryConfig(), store, users, "bench.test"), loop
        ).result()
        # start_lmtp_server is typed as returning the abstract server; it is a listening one.
        assert isinstance(server, asyncio.Server)
        port = server.sockets[0].getsockname()[1]
        for size in sizes:
            rate = measure(port, size, args.count, args.clients)
            print(
                f"{size:>7} octets  {args.count} messages  {args.clients} client(s)  "
                f"{rate:8.1f} messages/s"
            )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
