"""Admission: a request gets a lease on a ready instance, waiting for a boot if it must.

Requests never start or stop machines themselves. They lease a ready instance atomically;
when none is ready they join the tier's queue, ask the lifecycle for a start and wait for
the tier's pub/sub channel, telling their user how the boot goes. A request that gives up
(Stop pressed, page closed, client gone) leaves the queue at once, and when it was the last
one waiting for a boot that requests started, `decide` gives that boot up: nobody pays for
a machine nobody waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from .config import Config, TierConfig
from .decide import boot_eta
from .errors import QueueFull, TierTimeout, TierUnavailable
from .leases import Leases
from .ledger import GAP_MIN_S, Ledger
from .lifecycle import Lifecycle
from .machine import InstanceState as S
from .notifier import Notifier
from .state import State, TierView, now_ms

WAIT_TICK = 1.0  # how often a waiter whose user watches progress re-reads state
WAIT_TICK_UNWATCHED = 5.0  # a safety re-read only: waiters wake on the tier's pub/sub channel


@dataclass
class Progress:
    """What a waiting request can tell its user while the tier boots."""

    tier: str
    stage: str  # queued | starting machine | loading model | ready | failed | fallback
    elapsed: float
    eta: float | None
    position: int
    message: str = ""


@dataclass
class Lease:
    """A request's hold on one ready instance; the instance is not idled out while held."""

    tier: str
    instance: str
    url: str
    id: str
    waited: float  # seconds spent waiting for the tier to become ready
    requested_tier: str
    fallback_reason: str = ""


ProgressFn = Callable[[Progress], Awaitable[None]]


class Admission:
    def __init__(
        self, cfg: Config, state: State, leases: Leases, ledger: Ledger, notifier: Notifier, lifecycle: Lifecycle
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.leases = leases
        self.ledger = ledger
        self.notifier = notifier
        self.lifecycle = lifecycle

    async def acquire(
        self, tier_name: str, on_progress: ProgressFn | None = None, unfit: Mapping[str, str] | None = None,
        asker: str = "", _tried: tuple[str, ...] = (),
    ) -> Lease:
        """Lease a ready instance of `tier_name`, starting the tier and waiting if needed.

        `unfit`: fallback tiers that could not serve this request (and why): never started for it.
        `asker`: who asks (a UI session, an API key), for the idle policy's visit forecast.
        """
        tier = self.cfg.tiers[tier_name]
        ids = [i.id for i in tier.instances]
        lease = self.leases.new_id()
        qid = lease + ":q"
        t0 = time.monotonic()
        arrived = now_ms()
        deadline = t0 + tier.boot_timeout + 15
        queued = served = first_in_queue = False
        try:
            while True:
                changed = self.notifier.waiter(tier_name)
                got = await self.leases.claim(tier_name, ids, lease, tier.max_inflight_per_instance)
                if got:
                    served = True
                    if not queued:  # a queued request noted its arrival when it joined
                        burst = got.was_idle and got.idle_ms <= GAP_MIN_S * 1000  # not a new arrival: the same burst
                        self.ledger.arrival(tier_name, asker, got.idle_ms / 1000 if got.was_idle and not burst else None)
                    elif first_in_queue:  # the first request after a cold start: what the restart cost in waiting
                        self.ledger.cold_wait(tier_name, time.monotonic() - t0)
                    if got.pool_full:
                        self.lifecycle.ensure(tier_name, "every instance is at max_inflight_per_instance",
                                              started_by="scale", scale=True)
                    waited = time.monotonic() - t0
                    if on_progress and queued:
                        await on_progress(Progress(tier_name, "ready", waited, 0, 0))
                    return Lease(tier_name, got.instance, got.url, lease, waited, _tried[0] if _tried else tier_name)
                if not queued:
                    before = await self.leases.enqueue(tier_name, qid)
                    queued = True
                    if before >= tier.max_queue:
                        raise QueueFull(
                            f"tier {tier_name!r} has {before} requests waiting (max_queue {tier.max_queue})",
                            headers={"Retry-After": str(max(1, int(tier.boot_seconds)))},
                        )
                    first_in_queue = before == 0
                    # the first of a herd ends the idle gap (its length is in Redis); the rest are the same burst
                    self.ledger.arrival(tier_name, asker, -1.0 if first_in_queue else None)
                view = await self.lifecycle.view(tier)
                st = view.state
                failed = view.failed
                if failed is not None and failed.changed_at >= arrived:
                    # the start this request waited for failed: once its owner has tried every instance
                    # (the lock is free), the fallback or a clear error; never a start of its own
                    if not await self.state.lock_holder(tier_name):
                        return await self._fall_back(tier, failed.reason, on_progress, unfit or {}, asker,
                                                     (*_tried, tier_name))
                elif st in (S.STOPPED, S.FAILED):
                    # idempotent: one task per process, and the tier lock makes it one start overall
                    self.lifecycle.ensure(tier_name, "a request arrived")
                elif st in (S.STARTING, S.STOPPING) and not await self.state.lock_holder(tier_name):
                    self.lifecycle.ensure(tier_name, "resuming a transition whose owner is gone")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TierTimeout(
                        f"tier {tier_name!r} ({tier.gpu}) did not become ready within "
                        f"{tier.boot_timeout:.0f}s (state: {st})"
                    )
                if on_progress:
                    position = await self.leases.position(tier_name, qid)
                    await on_progress(self._progress(tier, view, t0, position))
                tick = WAIT_TICK if on_progress else WAIT_TICK_UNWATCHED
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(tick, remaining))
        finally:
            if queued:
                await asyncio.shield(self._leave(tier_name, qid, served))

    async def _leave(self, tier: str, qid: str, served: bool) -> None:
        """Leave the queue; the last waiter to give up wakes the boot's owner (it may give the boot up)."""
        left = await self.leases.dequeue(tier, qid)
        if left == 0 and not served:
            await self.state.publish(tier, "nobody_waits")

    async def release(self, lease: Lease) -> None:
        await self.leases.release(lease.id)

    async def _fall_back(
        self, tier: TierConfig, reason: str, on_progress: ProgressFn | None, unfit: Mapping[str, str], asker: str,
        tried: tuple[str, ...],
    ) -> Lease:
        target = tier.fallback
        if not target or target in tried or target not in self.cfg.tiers:
            raise TierUnavailable(f"tier {tier.name!r} ({tier.gpu}) could not be started: {reason}")
        if target in unfit:
            raise TierUnavailable(f"tier {tier.name!r} ({tier.gpu}) could not be started: {reason}; "
                                  f"its fallback {target!r} cannot take this request: {unfit[target]}")
        if on_progress:
            await on_progress(Progress(tier.name, "fallback", 0, None, 0, f"{tier.name} failed ({reason}); using {target}"))
        lease = await self.acquire(target, on_progress, unfit, asker, tried)
        lease.fallback_reason = f"tier {tier.name!r} could not be started ({reason}); answered by {target!r}"
        return lease

    def _progress(self, tier: TierConfig, view: TierView, t0: float, position: int) -> Progress:
        elapsed = time.monotonic() - t0
        booting = [i for i in view.instances if i.state == S.STARTING]
        eta = boot_eta(tier, view.boots)
        if booting:
            since = (now_ms() - booting[0].boot_started) / 1000
            stage = booting[0].stage or "starting machine"
            return Progress(tier.name, stage, elapsed, max(0.0, eta - since), position)
        stage = {S.STOPPING: "waiting for the previous stop", S.FAILED: "retrying"}.get(view.state, "starting machine")
        return Progress(tier.name, stage, elapsed, eta, position)
