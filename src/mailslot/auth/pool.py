"""A bounded, fair pool for slow password checks (argon2, bcrypt, sha-crypt).

A slow hash is a cost anyone who can connect may make the server pay (an argon2id check
with Dovecot's parameters takes ~150 ms of a core).  Unbounded, 200 guessing connections
kept every core busy and another client's login waited over a second.  Here:

- at most ``threads`` checks run at once (about the number of cores the worker may use), in
  threads of the pool's own, so a flood cannot take the threads asyncio lends out elsewhere;
- checks waiting for a thread are queued per client (its address, or its IPv6 network) and
  the client served longest ago goes first, so a client with many checks waiting delays
  another's by at most one check per thread, not by its whole queue;
- a client may have at most ``per_client`` checks queued or running; a further one is
  refused at once (:class:`VerifyRefused`), without a check: the backend answers it as a
  wrong password (RFC 3206 ``[AUTH]``).

Checks without a client (``client=None``: a caller that does not know one) share one queue
that has no cap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar

__all__ = ["VerifyPool", "VerifyRefused"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_NO_CLIENT = "\x00"  # never an address


class VerifyRefused(Exception):
    """The client already has ``per_client`` checks queued or running."""


class VerifyPool:
    """See the module docstring.  Use it from one event loop."""

    def __init__(
        self,
        threads: int,
        per_client: int = 2,
        *,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if threads < 1 or per_client < 1:
            raise ValueError("a pool needs at least one thread and one check per client")
        self.threads = threads
        self.per_client = per_client
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="mailslot-verify"
        )
        self._running = 0
        # Clients with checks waiting, in the order they are served next; each a FIFO of
        # futures resolved when that check may take a thread.
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._held: dict[str, int] = {}  # checks queued or running, per client
        self._active: dict[str, int] = {}  # checks running, per client
        self._turns = 0
        self._served: dict[str, int] = {}  # when each client with checks held last had a turn

    @property
    def running(self) -> int:
        return self._running

    def waiting(self, client: str | None = None) -> int:
        """Checks waiting for a thread: ``client``'s, or everyone's."""
        if client is not None:
            return len(self._queues.get(client, ()))
        return sum(len(queue) for queue in self._queues.values())

    async def run(self, client: str | None, check: Callable[[], T]) -> T:
        """Run ``check()`` on a pool thread once it is ``client``'s turn; its result."""
        key = _NO_CLIENT if client is None else client
        held = self._held.get(key, 0)
        if client is not None and held >= self.per_client:
            log.info("password check refused: client %s has %d checks waiting", client, held)
            raise VerifyRefused
        self._held[key] = held + 1
        try:
            await self._turn(key)
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, check)
            finally:
                self._release(key)
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]
                self._served.pop(key, None)

    async def _turn(self, key: str) -> None:
        """Return once this check holds one of the pool's threads."""
        if self._running < self.threads and not self._queues:
            self._take(key)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, deque()).append(turn)
        self._dispatch()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                # Granted just as the session ended: hand the thread on.
                self._release(key)
            else:
                queue = self._queues.get(key)
                if queue is not None and turn in queue:
                    queue.remove(turn)
                    if not queue:
                        del self._queues[key]
            raise

    def _take(self, key: str) -> None:
        self._running += 1
        self._active[key] = self._active.get(key, 0) + 1
        self._turns += 1
        self._served[key] = self._turns

    def _release(self, key: str) -> None:
        self._running -= 1
        left = self._active[key] - 1
        if left:
            self._active[key] = left
        else:
            del self._active[key]
        self._dispatch()

    def _dispatch(self) -> None:
        while self._running < self.threads and self._queues:
            # The client with the fewest checks running goes first, then the one served
            # longest ago: a client whose check just ran does not get a second before
            # another client gets its first.
            active, served = self._active, self._served
            key = min(self._queues, key=lambda k: (active.get(k, 0), served.get(k, 0)))
            queue = self._queues[key]
            turn = queue.popleft()
            if queue:
                self._queues.move_to_end(key)  # round-robin: the next client's turn
            else:
                del self._queues[key]
            if turn.done():
                continue
            self._take(key)
            turn.set_result(None)
