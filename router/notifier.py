"""Waking the requests and boot watches of this process when a tier changes, in any process.

Every transition and event is published on the tier's channel (`tg:ch:{tier}`); one pub/sub
connection per process turns those into `asyncio.Event`s. Waiting for a boot is therefore
event-driven: a waiter re-reads the state when something happened, and only a slow safety
tick covers a lost message (Redis restarting, say).
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from .state import PREFIX


class Notifier:
    """One pub/sub connection per process that wakes local waiters when a tier changes.

    Waiting for a boot is event-driven: a request awaits `waiter(tier)`, and the only
    fallback re-read is a slow safety tick, not a per-request poll.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._events: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.psubscribe(f"{PREFIX}ch:*")
                async for msg in pubsub.listen():
                    if msg.get("type") == "pmessage":
                        self._fire(msg["channel"].removeprefix(f"{PREFIX}ch:"))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reconnect; waiters still have their safety tick
                await asyncio.sleep(0.5)

    def _fire(self, tier: str) -> None:
        for name in (tier, "*") if tier != "*" else tuple(self._events):
            ev = self._events.pop(name, None)
            if ev is not None:
                ev.set()

    def waiter(self, tier: str) -> asyncio.Event:
        """Take the event *before* re-reading state, so a change in between is not missed."""
        ev = self._events.get(tier)
        if ev is None:
            ev = self._events[tier] = asyncio.Event()
        return ev

    async def aclose(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
