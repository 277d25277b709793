"""Work nobody waits for (bookkeeping, stores, stops), kept track of so it is never lost.

A task created and forgotten can be garbage-collected mid-way and is silently dropped at
exit. Everything the gateway does after an answer has gone out runs here instead: bounded
(a slow disk slows new answers down a little rather than piling up tasks without end) and
drained at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

log = logging.getLogger("tiergate")

LIMIT = 512  # pending bookkeeping tasks before new answers wait for a free slot


class Background:
    def __init__(self, limit: int = LIMIT) -> None:
        self._tasks: set[asyncio.Future] = set()
        self._slots = asyncio.Semaphore(limit)

    def spawn(self, coro: Awaitable) -> asyncio.Future:
        """Run `coro` on its own; a failure is logged, never raised into a request."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def later(self, coro: Awaitable) -> None:
        """`spawn` with a bound: waits only when LIMIT tasks are already pending."""
        await self._slots.acquire()
        task = self.spawn(coro)
        task.add_done_callback(lambda _: self._slots.release())

    def _done(self, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background work failed: %r", task.exception())

    async def drain(self, timeout: float = 10.0) -> None:
        """Let pending work finish (at most `timeout`), then cancel what is left."""
        pending = set(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for t in late:
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*late, return_exceptions=True)

    async def cancel_all(self) -> None:
        pending = set(self._tasks)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
