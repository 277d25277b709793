"""Tier lifecycle: the state machine of every tier and the one owner of its transitions.

Requests never start or stop machines themselves. They lease a ready instance
(`acquire`), and when none is ready they ask for a start and wait for the tier's pub/sub
channel. Every transition (start, boot watch, idle stop, admin stop, takeover after a
crash) runs in a task that holds the tier's Redis lock and re-reads the state under it.
The supervisor loop in every gateway process finds work nobody owns: idle instances,
boots or stops whose owner died, workers that vanished. See router/DESIGN.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from . import policy
from .backends.base import Backend
from .config import Config, InstanceConfig, TierConfig
from .errors import QueueFull, TierTimeout, TierUnavailable
from .providers.base import MachineState, MachineStatus, Misconfigured, NoCapacity, Provider
from .state import Notifier, State, TierView, now_ms

log = logging.getLogger("tiergate.lifecycle")

SUPERVISE_EVERY = 1.0
HEALTH_EVERY = {"local": 5.0, "static": 3600.0, "ecs": 30.0}  # seconds between machine checks
WAIT_TICK = 1.0  # how often a waiter whose user watches progress re-reads state (else every 5 s)
WAIT_TICK_UNWATCHED = 5.0  # a safety re-read only: waiters wake on the tier's pub/sub channel
LOCK_WAIT_AT_START = 15.0  # how long start-up reconcile waits for another process's transition


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


def boot_eta(tier: TierConfig, history: list[float]) -> float:
    """Median of recent boots, or the configured estimate before there is any history."""
    recent = history[:10]
    return statistics.median(recent) if recent else tier.boot_seconds


class Lifecycle:
    def __init__(
        self,
        cfg: Config,
        state: State,
        notifier: Notifier,
        providers: dict[str, Provider],
        backends: dict[str, Backend],
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.notifier = notifier
        self.providers = providers
        self.backends = backends
        self._tasks: dict[str, asyncio.Task] = {}  # tier -> its running transition in this process
        self._bg: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._last_health: dict[str, float] = {}

    # --- process start and stop ---------------------------------------------------------

    async def start(self) -> None:
        local = self.providers.get("local")
        if local is not None:
            for inst_id in local.kill_leftovers():  # type: ignore[attr-defined]
                log.warning("killed leftover worker %s of a gateway that died", inst_id)
        await self.state.epoch()
        await self.reconcile()
        self._loops = [asyncio.create_task(self._supervise()), asyncio.create_task(self._heartbeat())]

    async def shutdown(self) -> None:
        """Stop what this process owns: its local workers must not outlive it."""
        for t in self._loops:
            t.cancel()
        for t in list(self._tasks.values()) + list(self._bg):
            t.cancel()
        await asyncio.gather(*self._loops, *self._tasks.values(), *self._bg, return_exceptions=True)
        local = self.providers.get("local")
        if local is not None:
            for tier in self.cfg.tiers.values():
                for inst in tier.instances:
                    if inst.provider == "local" and inst.id in local._children:  # type: ignore[attr-defined]
                        with contextlib.suppress(Exception):
                            async with self.state.lock(tier.name, wait=5) as owned:
                                if owned:
                                    await self._stop_instance(tier, inst, "the gateway is shutting down")
            local.kill_own()  # type: ignore[attr-defined]

    # --- the request path ---------------------------------------------------------------

    async def acquire(self, tier_name: str, on_progress: ProgressFn | None = None, _tried: tuple[str, ...] = ()) -> Lease:
        """Lease a ready instance of `tier_name`, starting the tier and waiting if needed."""
        tier = self.cfg.tiers[tier_name]
        ids = [i.id for i in tier.instances]
        lease = self.state.new_lease()
        qid = lease + ":q"
        t0 = time.monotonic()
        arrived = now_ms()
        deadline = t0 + tier.boot_timeout + 15
        queued = False
        try:
            while True:
                changed = self.notifier.waiter(tier_name)
                got = await self.state.claim(ids, lease, tier.max_inflight_per_instance)
                if got:
                    inst_id, url, full, was_idle = got
                    if was_idle and not queued:  # a queued request noted its arrival when it joined
                        self.background(self.state.note_arrival(tier_name))
                    if full:
                        self.background(self._scale_out(tier))
                    waited = time.monotonic() - t0
                    if on_progress and queued:
                        await on_progress(Progress(tier_name, "ready", waited, 0, 0))
                    return Lease(tier_name, inst_id, url, lease, waited, _tried[0] if _tried else tier_name)
                if not queued:
                    before = await self.state.enqueue(tier_name, qid)
                    queued = True
                    if before >= tier.max_queue:
                        raise QueueFull(
                            f"tier {tier_name!r} has {before} requests waiting (max_queue {tier.max_queue})",
                            headers={"Retry-After": str(max(1, int(tier.boot_seconds)))},
                        )
                    if before == 0:  # the first of a herd ends the idle gap; the rest would repeat it
                        self.background(self.state.note_arrival(tier_name))
                view = await self.state.tier(tier_name)
                st = view.state
                if st == "failed" and view.failed_at >= arrived:
                    # the start this request waited for failed: the fallback, or a clear error
                    return await self._fall_back(tier, view.failed_reason, on_progress, (*_tried, tier_name))
                if st in ("stopped", "failed"):
                    # idempotent: one task per process, and the tier lock makes it one start overall
                    self.ensure_transition(tier_name, "a request arrived")
                elif st in ("starting", "stopping") and not await self.state.lock_holder(tier_name):
                    self.ensure_transition(tier_name, "resuming a transition whose owner is gone")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TierTimeout(
                        f"tier {tier_name!r} ({tier.gpu}) did not become ready within "
                        f"{tier.boot_timeout:.0f}s (state: {st})"
                    )
                if on_progress:
                    position = await self.state.queue_position(tier_name, qid)
                    await on_progress(self._progress(tier, view, t0, position))
                tick = WAIT_TICK if on_progress else WAIT_TICK_UNWATCHED
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(tick, remaining))
        finally:
            if queued:
                await self.state.dequeue(tier_name, qid)

    async def release(self, lease: Lease) -> None:
        await self.state.release(lease.id, lease.tier)

    async def _fall_back(
        self, tier: TierConfig, reason: str, on_progress: ProgressFn | None, tried: tuple[str, ...]
    ) -> Lease:
        target = tier.fallback
        if not target or target in tried:
            raise TierUnavailable(f"tier {tier.name!r} ({tier.gpu}) could not be started: {reason}")
        if on_progress:
            await on_progress(Progress(tier.name, "fallback", 0, None, 0, f"{tier.name} failed ({reason}); using {target}"))
        lease = await self.acquire(target, on_progress, tried)
        lease.fallback_reason = f"tier {tier.name!r} could not be started ({reason}); answered by {target!r}"
        return lease

    def _progress(self, tier: TierConfig, view: TierView, t0: float, position: int) -> Progress:
        elapsed = time.monotonic() - t0
        booting = [i for i in view.instances if i.state == "starting"]
        eta = boot_eta(tier, view.boots)
        if booting:
            since = (now_ms() - booting[0].boot_started) / 1000
            stage = booting[0].stage or "starting machine"
            return Progress(tier.name, stage, elapsed, max(0.0, eta - since), position)
        stage = {"stopping": "waiting for the previous stop", "failed": "retrying"}.get(view.state, "starting machine")
        return Progress(tier.name, stage, elapsed, eta, position)

    def background(self, coro: Awaitable) -> None:
        """Run work nobody waits for (bookkeeping, stops, checks) without losing its task."""
        self.track(asyncio.ensure_future(coro))

    def track(self, task: asyncio.Future) -> None:
        """Keep a reference to a task that must finish even if its caller goes away."""
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # --- transitions: only ever inside the tier's lock ------------------------------------

    def ensure_transition(self, tier_name: str, reason: str, *, actor: str = "", start: bool = True) -> asyncio.Task:
        """Run (at most one per process) the task that brings the tier where it should be.

        It first finishes any boot or stop whose owner is gone; with `start`, it then makes
        sure an instance is up (a takeover alone does not start machines nobody asked for).
        """
        task = self._tasks.get(tier_name)
        if task is None or task.done():
            task = asyncio.create_task(self._start_tier(self.cfg.tiers[tier_name], reason, actor, start=start))
            self._tasks[tier_name] = task
        return task

    async def _start_tier(
        self, tier: TierConfig, reason: str, actor: str = "", *, scale: bool = False, start: bool = True
    ) -> None:
        try:
            async with self.state.lock(tier.name) as owned:
                if not owned:
                    return  # another process owns the transition; our waiters hear its result
                view = await self.state.tier(tier.name)  # re-read under the lock
                for inst, iv in zip(tier.instances, view.instances, strict=True):
                    if iv.state == "stopping":
                        await self._stop_instance(tier, inst, "finishing a stop whose owner is gone")
                    elif iv.state == "starting":
                        await self._boot(tier, inst, reason, resume=True)
                view = await self.state.tier(tier.name)
                if not start or (view.state == "ready" and not scale):
                    return
                await self._start_one(tier, view, reason, actor)
        except Exception as exc:
            log.exception("transition of tier %s failed", tier.name)
            await self.state.set_failed(tier.name, f"internal error: {exc}")
            await self.state.publish(tier.name, "failed")

    async def _start_one(self, tier: TierConfig, view: TierView, reason: str, actor: str) -> None:
        refused = await self._over_budget(tier, view)
        if refused:
            await self.state.set_failed(tier.name, refused)
            await self.state.event(tier.name, "start_refused", reason=refused, actor=actor)
            return
        why: list[str] = []
        for inst, iv in zip(tier.instances, view.instances, strict=True):
            if iv.state not in ("stopped", "failed"):
                continue
            outcome = await self._boot(tier, inst, reason, actor=actor)
            if outcome is None:
                return
            why.append(outcome)
        if why:
            await self.state.set_failed(tier.name, "; ".join(why))
            await self.state.event(tier.name, "failed", reason="; ".join(why), actor=actor)

    async def _over_budget(self, tier: TierConfig, view: TierView) -> str:
        """Refuse a start once today's spend (closed plus still billing) reached a daily budget."""
        overall = self.cfg.gateway.daily_budget
        if not tier.daily_budget and not overall:
            return ""
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        spent: dict[str, float] = {}
        for t in self.cfg.tiers.values():
            if t.name != tier.name and not overall:
                continue
            day = (await self.state.days(t.name, [today]))[today]
            tv = view if t.name == tier.name else await self.state.tier(t.name)
            open_ms = tv.billed_ms(now_ms()) - tv.gpu_ms
            spent[t.name] = (day.get("gpu_ms", 0) + open_ms) / 3_600_000 * t.price_per_hour
        if tier.daily_budget and spent[tier.name] >= tier.daily_budget:
            return f"daily budget of tier {tier.name!r} reached ({spent[tier.name]:.2f} of {tier.daily_budget:.2f})"
        if overall and sum(spent.values()) >= overall:
            return f"overall daily budget reached ({sum(spent.values()):.2f} of {overall:.2f})"
        return ""

    async def _boot(
        self, tier: TierConfig, inst: InstanceConfig, reason: str, *, resume: bool = False, actor: str = ""
    ) -> str | None:
        """Start one instance and watch it until ready. None when ready, else why it is not."""
        provider = self.providers[inst.provider]
        backend = self.backends[tier.backend]
        if not resume:
            now = now_ms()
            billed = inst.provider != "static"
            await self.state.set_instance(
                inst.id, tier=tier.name, state="starting", stage="starting machine", boot_started=now,
                billing_since=now if billed else "", reason="", ready_cb=0, url="",
            )
            await self.state.clear_failed(tier.name)
            await self.state.count_start(tier.name)
            await self.state.event(tier.name, "starting", instance=inst.id, reason=reason, actor=actor)
            try:
                await provider.start(inst)
            except NoCapacity as exc:
                return await self._abandon(tier, inst, f"no capacity: {exc}", stop=False)
            except Misconfigured as exc:
                return await self._abandon(tier, inst, str(exc), stop=False)
            except Exception as exc:  # noqa: BLE001 - any other refusal: make sure nothing runs
                return await self._abandon(tier, inst, f"start failed: {exc}", stop=True)
        iv = await self.state.instance(inst.id, tier.name)
        started = iv.boot_started or now_ms()
        deadline = started / 1000 + tier.boot_timeout
        poll = getattr(provider, "poll_interval", 0.25)
        next_status = 0.0
        url = ""
        running = inst.provider in ("local", "static")
        while time.time() < deadline:
            changed = self.notifier.waiter(tier.name)
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + poll
                st = await provider.status(inst)
                if st.state == MachineState.STOPPED and running:
                    return await self._abandon(tier, inst, st.detail or "the machine stopped during boot", stop=True)
                if st.state == MachineState.RUNNING and not url:
                    running = True
                    url = await provider.url(inst)
                    await self.state.set_instance(inst.id, stage="loading model", url=url)
                    await self.state.publish(tier.name, "loading")
            if url:
                iv = await self.state.instance(inst.id, tier.name)
                if iv.ready_cb or await backend.health(url):
                    seconds = time.time() - started / 1000
                    await self.state.set_instance(inst.id, state="ready", stage="", ready_at=now_ms(), last_active=now_ms())
                    await self.state.record_boot(tier.name, seconds)
                    await self.state.event(
                        tier.name, "ready", instance=inst.id, reason=f"cold start {seconds:.1f}s", actor=actor
                    )
                    return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 0.25)
        return await self._abandon(
            tier, inst, f"{inst.id} did not become ready within boot_timeout {tier.boot_timeout:.0f}s", stop=True
        )

    async def _abandon(self, tier: TierConfig, inst: InstanceConfig, why: str, *, stop: bool) -> str:
        """A start that did not lead to a ready worker: make sure nothing keeps billing."""
        if stop:
            await self._stop_instance(tier, inst, why, failed=True)
        else:
            await self.state.set_instance(inst.id, state="stopped", stage="", url="", reason=why, billing_since="")
            await self.state.event(tier.name, "start_refused", instance=inst.id, reason=why)
        return why

    async def _stop_instance(
        self, tier: TierConfig, inst: InstanceConfig, reason: str, *, failed: bool = False, actor: str = ""
    ) -> None:
        """Stop one instance; if the provider fails, it stays `stopping` so a supervisor retries."""
        await self.state.set_instance(inst.id, state="stopping", stage="")
        await self.state.event(tier.name, "stopping", instance=inst.id, reason=reason, actor=actor)
        try:
            await self.providers[inst.provider].stop(inst)
        except Exception as exc:  # noqa: BLE001
            await self.state.set_instance(inst.id, reason=f"stop failed, will retry: {exc}")
            await self.state.event(tier.name, "stop_failed", instance=inst.id, reason=str(exc))
            return
        billed = await self.state.close_billing(tier.name, inst.id)
        await self.state.set_instance(inst.id, state="stopped", stage="", url="", reason=reason if failed else "")
        await self.state.event(
            tier.name, "stopped", instance=inst.id, reason=f"{reason} (billed {billed / 1000:.1f}s)", actor=actor
        )

    async def _scale_out(self, tier: TierConfig) -> None:
        view = await self.state.tier(tier.name)
        if any(i.state == "starting" for i in view.instances):
            return
        if not any(i.state in ("stopped", "failed") for i in view.instances):
            return
        task = self._tasks.get(tier.name)
        if task is None or task.done():
            self._tasks[tier.name] = asyncio.create_task(
                self._start_tier(tier, "in flight per instance passed max_inflight_per_instance", scale=True)
            )

    # --- admin and callbacks -------------------------------------------------------------

    async def admin_start(self, tier_name: str, actor: str) -> None:
        """Begin a start and return; the boot goes on in the background (watch /api/tiers)."""
        await self.state.clear_failed(tier_name)
        self.ensure_transition(tier_name, "started by an admin", actor=actor)
        await asyncio.sleep(0)

    async def admin_stop(self, tier_name: str, actor: str) -> None:
        tier = self.cfg.tiers[tier_name]
        async with self.state.lock(tier_name, wait=tier.boot_timeout + 30) as owned:
            if not owned:
                raise TierUnavailable(f"tier {tier_name!r} is busy with another transition; try again")
            view = await self.state.tier(tier_name)
            for inst, iv in zip(tier.instances, view.instances, strict=True):
                if iv.state != "stopped" and inst.provider != "static":
                    await self._stop_instance(tier, inst, "stopped by an admin", actor=actor)
            await self.state.clear_failed(tier_name)

    async def retire(self, tier: TierConfig) -> None:
        """A tier removed from the config: let its requests finish, then stop its machines."""
        for inst in tier.instances:
            if inst.provider == "static":
                continue
            while True:
                async with self.state.lock(tier.name, wait=5) as owned:
                    iv = await self.state.instance(inst.id, tier.name)
                    if owned and iv.state in ("stopped", "failed", ""):
                        break
                    if owned and (iv.state != "ready" or await self.state.begin_idle_stop(inst.id, 0)):
                        await self._stop_instance(tier, inst, "tier removed from the config")
                        break
                await asyncio.sleep(1)

    async def instance_ready(self, inst_id: str) -> bool:
        """A worker's own "I am ready" callback: faster than the next health poll."""
        found = self.cfg.instance(inst_id)
        if found is None:
            return False
        tier, _ = found
        await self.state.set_instance(inst_id, ready_cb=now_ms())
        await self.state.publish(tier.name, "ready_callback")
        return True

    async def report_broken(self, lease: Lease, why: str) -> None:
        """A ready worker refused a connection: re-check it now, before the request retries."""
        tier = self.cfg.tiers[lease.tier]
        inst = next(i for i in tier.instances if i.id == lease.instance)
        await self._check_instance(tier, inst, why)

    # --- the supervisor: work nobody owns ------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(3)
            with contextlib.suppress(Exception):
                await self.state.heartbeat()

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_EVERY)
            try:
                await self.supervise_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervisor pass failed")

    async def supervise_once(self) -> None:
        now = now_ms()
        for tier in self.cfg.tiers.values():
            task = self._tasks.get(tier.name)
            if task is not None and not task.done():
                continue  # this process is already moving the tier
            view = await self.state.tier(tier.name)
            in_window = await self._in_prewarm_window(tier)
            if in_window and view.state in ("stopped",) and not view.failed_reason:
                self.ensure_transition(tier.name, "scheduled pre-warm window")
                continue
            orphaned = any(i.state in ("starting", "stopping") for i in view.instances)
            if orphaned and not await self.state.lock_holder(tier.name):
                self.ensure_transition(tier.name, "resuming a transition whose owner is gone", start=False)
                continue
            gaps = await self.state.gaps(tier.name) if tier.policy != "fixed" else []
            idle_s = policy.keep_alive(tier, gaps, boot_eta(tier, view.boots))
            for inst, iv in zip(tier.instances, view.instances, strict=True):
                if iv.state in ("stopped", "failed", "") and self._health_due(inst):
                    self.background(self._check_instance(tier, inst, "reconcile"))  # adopt a running machine
                if iv.state != "ready" or inst.provider == "static":
                    continue
                too_long = tier.max_runtime and iv.boot_started and now - iv.boot_started >= tier.max_runtime * 1000
                if too_long:
                    self.background(self._forced_stop(tier, inst, f"max_runtime {tier.max_runtime:.0f}s reached"))
                elif not in_window and iv.inflight == 0 and now - iv.last_active >= idle_s * 1000:
                    self.background(self._idle_stop(tier, inst, idle_s))
                elif self._health_due(inst):
                    self.background(self._check_instance(tier, inst, "periodic health check"))

    def _health_due(self, inst: InstanceConfig) -> bool:
        """Local checks are free; a cloud API is asked at most every 30 s (its reconcile period)."""
        every = HEALTH_EVERY.get(inst.provider, 5.0)
        last = self._last_health.get(inst.id, 0.0)
        if time.monotonic() - last < every:
            return False
        self._last_health[inst.id] = time.monotonic()
        return True

    async def _in_prewarm_window(self, tier: TierConfig) -> bool:
        """Inside a scheduled window, or an hour the tier is regularly used (`prewarm_predict`)."""
        if not tier.prewarm and not tier.prewarm_predict:
            return False
        from . import prewarm

        history = await self.state.arrivals(tier.name) if tier.prewarm_predict else []
        return prewarm.in_window(tier, datetime.now(UTC), history)

    async def _idle_stop(self, tier: TierConfig, inst: InstanceConfig, idle_s: float) -> None:
        async with self.state.lock(tier.name) as owned:
            if owned and await self.state.begin_idle_stop(inst.id, idle_s):
                await self._stop_instance(tier, inst, f"idle for {idle_s:.0f}s")

    async def _forced_stop(self, tier: TierConfig, inst: InstanceConfig, why: str) -> None:
        async with self.state.lock(tier.name) as owned:
            if owned and (await self.state.instance(inst.id, tier.name)).state == "ready":
                await self._stop_instance(tier, inst, why)

    async def _check_instance(self, tier: TierConfig, inst: InstanceConfig, why: str) -> None:
        """Compare one instance with its machine; cheap when they agree (no lock taken)."""
        st = await self.providers[inst.provider].status(inst)
        iv = await self.state.instance(inst.id, tier.name)
        if _agrees(inst, iv.state, st.state, st.reclaimed):
            return
        async with self.state.lock(tier.name, wait=2) as owned:
            if owned:
                await self._reconcile_instance(tier, inst, st, why)

    async def reconcile(self) -> None:
        """At start: make shared state agree with what the providers say is running."""
        for tier in self.cfg.tiers.values():
            async with self.state.lock(tier.name, wait=LOCK_WAIT_AT_START) as owned:
                if not owned:
                    continue
                for inst in tier.instances:
                    st = await self.providers[inst.provider].status(inst)
                    await self._reconcile_instance(tier, inst, st, "gateway start-up")

    async def _reconcile_instance(self, tier: TierConfig, inst: InstanceConfig, st: MachineStatus, why: str) -> None:
        """Under the tier lock: re-read, then fix a disagreement between state and machine.

        A machine that is gone (crash, spot reclaim, a stop done by hand) is marked stopped and
        billed until now; a machine running that the state does not know (a gateway crashed
        after starting it, someone started it by hand) is adopted, so it idles out like any other.
        """
        iv = await self.state.instance(inst.id, tier.name)  # the re-check under the lock
        if _agrees(inst, iv.state, st.state, st.reclaimed):
            return
        if iv.state in ("ready", "starting", "stopping"):
            detail = "reclaimed by the cloud" if st.reclaimed else (st.detail or "the machine is not running")
            if st.state == MachineState.STOPPED:
                await self.state.close_billing(tier.name, inst.id)
                await self.state.set_instance(inst.id, tier=tier.name, state="stopped", stage="", url="")
                await self.state.event(tier.name, "stopped", instance=inst.id, reason=f"{detail} ({why})")
            else:  # still running but reclaimed: stop it properly
                await self._stop_instance(tier, inst, f"{detail} ({why})")
            return
        if inst.provider == "static" or inst.adopt_running:
            reason = "always-on URL" if inst.provider == "static" else f"adopted a running machine ({why})"
            await self.state.set_instance(
                inst.id, tier=tier.name, state="starting", stage="loading model", boot_started=now_ms(),
                billing_since="" if inst.provider == "static" else now_ms(),
            )
            await self.state.event(tier.name, "adopted", instance=inst.id, reason=reason)
            await self._boot(tier, inst, reason, resume=True)


def _agrees(inst: InstanceConfig, state: str, machine: MachineState, reclaimed: bool) -> bool:
    """Does the shared state match what the provider says? Transitions in progress always do."""
    if state in ("starting", "stopping"):
        return True
    running = machine in (MachineState.RUNNING, MachineState.STARTING)
    if state == "ready":
        return running and not reclaimed
    return not running or (not inst.adopt_running and inst.provider != "static")
