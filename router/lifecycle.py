"""Carrying out transitions: start and watch a boot, stop, give up, adopt, reconcile.

Every piece of work here runs inside the tier's owner lock (one process at a time per
tier) and changes an instance only through `State.transition`, the compare-and-swap that
refuses a move from a state the instance is no longer in. So an action decided on a read
that went stale in between changes nothing. What to do and when is decided elsewhere:
`decide.py` (idle stops, pre-warm, boot give-ups, scale-out), `admission.py` (requests that
need a tier up), the admin; this module only knows how. See router/DESIGN.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Mapping

from .backends.base import Backend, Identity
from .background import Background
from .budget import Budget
from .config import Config, InstanceConfig, TierConfig
from .decide import Action, History, InstanceFacts, TierFacts, decide
from .errors import TierUnavailable
from .ledger import Ledger
from .machine import InstanceState as S
from .notifier import Notifier
from .providers.base import MachineState, Misconfigured, NoCapacity, Provider
from .reconcile import Reconciler
from .state import LockLost, State, TierView, now_ms

log = logging.getLogger("tiergate.lifecycle")

BOOT_TICK = 0.25  # a boot watch re-reads the instance at least this often (it also wakes on pub/sub)
DEAD_AFTER = 10.0  # a machine reported stopped this long after its start (never seen up) did not start


class Lifecycle:
    def __init__(
        self,
        cfg: Config,
        state: State,
        ledger: Ledger,
        notifier: Notifier,
        providers: dict[str, Provider],
        backends: dict[str, Backend],
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.ledger = ledger
        self.notifier = notifier
        self.providers = providers
        self.backends = backends
        self.budget = Budget(cfg, state, ledger)
        self.reconciler = Reconciler(self)
        self._tasks: dict[str, asyncio.Task] = {}  # tier -> the transition this process runs for it
        self.tasks = Background()  # stops and checks nobody waits for

    # --- bookkeeping of this process's work ---------------------------------------------

    def busy(self, tier: str) -> bool:
        task = self._tasks.get(tier)
        return task is not None and not task.done()

    def background(self, coro: Awaitable) -> asyncio.Future:
        return self.tasks.spawn(coro)

    async def view(self, tier: TierConfig) -> TierView:
        return await self.state.tier(tier.name, [i.id for i in tier.instances])

    def provider(self, inst: InstanceConfig) -> Provider:
        return self.providers[inst.provider]

    @property
    def billed(self) -> dict[str, bool]:
        return {kind: p.billed for kind, p in self.providers.items()}

    # --- starting ------------------------------------------------------------------------

    def ensure(
        self, tier_name: str, reason: str, *, started_by: str = "request", actor: str = "",
        start: bool = True, scale: bool = False,
    ) -> asyncio.Task:
        """Run (at most one per process) the task that brings the tier where it should be.

        It first finishes any boot or stop whose owner is gone; with `start`, it then makes
        sure an instance is up (a takeover alone does not start machines nobody asked for).
        """
        task = self._tasks.get(tier_name)
        if task is None or task.done():
            tier = self.cfg.tiers[tier_name]
            task = asyncio.create_task(self._own(tier, reason, started_by, actor, start=start, scale=scale))
            self._tasks[tier_name] = task
        return task

    async def _own(self, tier: TierConfig, reason: str, started_by: str, actor: str, *, start: bool, scale: bool) -> None:
        try:
            async with self.state.lock(tier.name) as owned:
                if not owned:
                    return  # another process owns the tier; our waiters hear its result
                view = await self.view(tier)  # the re-read under the lock
                for inst, iv in zip(tier.instances, view.instances, strict=True):
                    if iv.state == S.STOPPING:
                        await self.stop_machine(tier, inst, iv.reason or "finishing a stop whose owner is gone",
                                                 then=S(iv.then or S.STOPPED))
                    elif iv.state == S.STARTING:
                        await self.watch(tier, inst, actor)
                view = await self.view(tier)
                if not start or (view.state in (S.READY, S.STARTING) and not scale):
                    return
                await self._start_one(tier, view, reason, started_by, actor)
        except LockLost as exc:
            log.error("tier %s: %s", tier.name, exc)
        except Exception as exc:
            log.exception("transition of tier %s failed", tier.name)
            await self.state.event(tier.name, "error", reason=f"internal error: {exc}")

    async def _start_one(self, tier: TierConfig, view: TierView, reason: str, started_by: str, actor: str) -> None:
        candidates = [(inst, iv) for inst, iv in zip(tier.instances, view.instances, strict=True)
                      if iv.state in (S.STOPPED, S.FAILED)]
        refused = await self.budget.refusal(tier)
        if refused:
            for inst, iv in candidates:
                if iv.state == S.STOPPED:
                    await self.state.transition(inst.id, tier.name, S.STOPPED, S.FAILED, reason=refused)
                else:
                    await self.state.set_fields(inst.id, reason=refused, changed_at=now_ms())
            await self.state.event(tier.name, "start_refused", reason=refused, actor=actor)
            return
        why: list[str] = []
        for inst, iv in candidates:
            outcome = await self._boot(tier, inst, iv.state, reason, started_by, actor)
            if outcome is None:
                return
            if (await self.state.instance(inst.id, tier.name)).state == S.STOPPED:
                return  # called off (nobody waits any more, an admin stop): not a reason to try the next one
            why.append(outcome)
        if why:
            await self.state.event(tier.name, "failed", reason="; ".join(why), actor=actor)

    async def _boot(
        self, tier: TierConfig, inst: InstanceConfig, was: S, reason: str, started_by: str, actor: str
    ) -> str | None:
        """Start one instance and watch it until ready. None when ready, else why it is not."""
        provider = self.provider(inst)
        await self.ledger.close_standby(tier.name, inst.id)  # a start from standby ends it
        now = now_ms()
        moved = await self.state.transition(
            inst.id, tier.name, was, S.STARTING, stage="starting machine", boot_started=now,
            billing_since=now if provider.billed else "", reason="", started_by=started_by, ready_cb=0, url="",
            handle={}, cancel="",
        )
        if not moved:
            return f"{inst.id} changed state while starting"
        await self.state.event(tier.name, "starting", instance=inst.id, reason=reason, actor=actor)
        try:
            handle = await provider.start(inst)
        except (NoCapacity, Misconfigured) as exc:
            prefix = "no capacity: " if isinstance(exc, NoCapacity) else ""
            return await self._refused(tier, inst, f"{prefix}{exc}")
        except Exception as exc:  # noqa: BLE001 - any other refusal: make sure nothing runs
            return await self._give_up(tier, inst, f"start failed: {exc}")
        await self.state.set_fields(inst.id, handle=handle)
        await self.ledger.count_start(tier.name)
        return await self.watch(tier, inst, actor)

    async def watch(self, tier: TierConfig, inst: InstanceConfig, actor: str) -> str | None:
        """Follow a boot until the worker shows its identity; give it up when `decide` says so."""
        provider = self.provider(inst)
        backend = self.backends[tier.backend]
        identity = Identity(inst.id, tier.model, inst.identify)
        next_status = 0.0
        seen_up = False
        while True:
            changed = self.notifier.waiter(tier.name)
            view = await self.view(tier)
            iv = next(i for i in view.instances if i.id == inst.id)
            if iv.state != S.STARTING:
                return None if iv.state == S.READY else f"{inst.id} is {iv.state}"
            if iv.cancel:
                return await self._give_up(tier, inst, iv.cancel, failed=False)
            now = time.time()
            for action in decide(tier, facts_of(tier, view, self.billed), now, History(boots=view.boots)):
                if action.kind == "give_up_boot" and action.instance == inst.id:
                    late = now - iv.boot_started / 1000 >= tier.boot_timeout  # a failure, not a cancellation
                    return await self._give_up(tier, inst, action.reason, failed=late)
            url = iv.url
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + provider.poll_interval
                st = await provider.status(inst, iv.handle)
                if st.state in (MachineState.RUNNING, MachineState.STARTING):
                    seen_up = True
                elif st.state == MachineState.STOPPED and (seen_up or now - iv.boot_started / 1000 > DEAD_AFTER):
                    return await self._give_up(tier, inst, st.detail or "the machine stopped during boot")
                if st.state == MachineState.RUNNING and not url:
                    url = await provider.url(inst, iv.handle)
                    await self.state.set_fields(inst.id, stage="loading model", url=url)
                    await self.state.publish(tier.name, "loading")
            if url and (iv.ready_cb or await backend.health(url, identity)):
                t = now_ms()
                if await self.state.transition(inst.id, tier.name, S.STARTING, S.READY, stage="", ready_at=t,
                                               last_active=t):
                    seconds = t / 1000 - iv.boot_started / 1000
                    await self.ledger.record_boot(tier.name, seconds)
                    await self.state.event(tier.name, "ready", instance=inst.id, reason=f"cold start {seconds:.1f}s",
                                           actor=actor)
                    return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), BOOT_TICK)

    async def _refused(self, tier: TierConfig, inst: InstanceConfig, why: str) -> str:
        """The provider refused before anything ran: nothing was billed."""
        await self.state.transition(inst.id, tier.name, S.STARTING, S.FAILED, stage="", url="", reason=why,
                                    billing_since="")
        await self.state.event(tier.name, "start_refused", instance=inst.id, reason=why)
        return why

    async def _give_up(self, tier: TierConfig, inst: InstanceConfig, why: str, *, failed: bool = True) -> str:
        """A start that did not lead to a ready worker: stop the machine; `failed` unless it was called off."""
        then = S.FAILED if failed else S.STOPPED
        if await self.state.transition(inst.id, tier.name, S.STARTING, S.STOPPING, stage="", reason=why, then=then):
            await self.stop_machine(tier, inst, why, then=then)
        return why

    # --- stopping ------------------------------------------------------------------------

    async def stop_machine(
        self, tier: TierConfig, inst: InstanceConfig, reason: str, *, then: S = S.STOPPED, standby: bool = False,
        actor: str = "",
    ) -> bool:
        """The instance is `stopping`: stop its machine, close billing, land in `then`.

        If the provider fails, the instance stays `stopping` (billing open) and the
        supervisor of any gateway finishes the stop later: nothing is ever left running.
        """
        await self.state.event(tier.name, "stopping", instance=inst.id, reason=reason, actor=actor)
        iv = await self.state.instance(inst.id, tier.name)
        try:
            await self.provider(inst).stop(inst, iv.handle, standby=standby)
        except Exception as exc:  # noqa: BLE001
            await self.state.set_fields(inst.id, stage=f"stop failed, will retry: {exc}")
            await self.state.event(tier.name, "stop_failed", instance=inst.id, reason=str(exc))
            return False
        billed = await self.ledger.close_billing(tier.name, inst.id)
        await self.state.transition(inst.id, tier.name, S.STOPPING, then, stage="", url="", handle={}, then="",
                                    reason=reason if then == S.FAILED else "", standby_since=now_ms() if standby else "")
        await self.state.event(tier.name, "stopped", instance=inst.id, reason=f"{reason} (billed {billed / 1000:.1f}s)",
                               actor=actor)
        return True

    async def idle_stop(self, tier: TierConfig, inst: InstanceConfig, action: Action) -> None:
        """Stop an idle instance (or end its standby); the compare-and-swap re-checks idleness atomically."""
        async with self.state.lock(tier.name) as owned:
            if not owned:
                return
            iv = await self.state.instance(inst.id, tier.name)  # the re-check under the lock
            if iv.state == S.STOPPED and iv.standby_since:
                await self._end_standby(tier, inst, action.reason)
            elif await self.state.transition(inst.id, tier.name, S.READY, S.STOPPING,
                                             idle_ms=int(action.keep_alive * 1000), stage="", reason=action.reason):
                await self.stop_machine(tier, inst, action.reason, standby=action.standby)

    async def _end_standby(self, tier: TierConfig, inst: InstanceConfig, why: str) -> None:
        """From the cheaper stop to the full one: the machine stops billing altogether."""
        try:
            await self.provider(inst).stop(inst, {}, standby=False)
        except Exception as exc:  # noqa: BLE001 - still in standby: the next pass tries again
            await self.state.event(tier.name, "stop_failed", instance=inst.id, reason=str(exc))
            return
        ms = await self.ledger.close_standby(tier.name, inst.id)
        await self.state.event(tier.name, "stopped", instance=inst.id, reason=f"{why} (standby {ms / 1000:.0f}s)")

    async def force_stop(self, tier: TierConfig, inst: InstanceConfig, why: str, actor: str = "") -> None:
        async with self.state.lock(tier.name) as owned:
            if owned and await self.state.transition(inst.id, tier.name, S.READY, S.STOPPING, stage=""):
                await self.stop_machine(tier, inst, why, actor=actor)

    async def give_up_boot(self, tier: TierConfig, inst: InstanceConfig, why: str) -> None:
        """Ask whoever watches the boot to give it up (or, if nobody does, take the watch over)."""
        await self.state.set_fields(inst.id, cancel=why)
        await self.state.publish(tier.name, "cancel")
        if not await self.state.lock_holder(tier.name):
            self.ensure(tier.name, "resuming a boot whose owner is gone", start=False)

    # --- admin and callbacks -------------------------------------------------------------

    async def admin_stop(self, tier_name: str, actor: str) -> None:
        """Stop every machine of the tier now (a boot is given up first) and clear a failure."""
        tier = self.cfg.tiers[tier_name]
        for inst, iv in zip(tier.instances, (await self.view(tier)).instances, strict=True):
            if iv.state == S.STARTING:
                await self.state.set_fields(inst.id, cancel="stopped by an admin")
        await self.state.publish(tier_name, "cancel")
        async with self.state.lock(tier_name, wait=30) as owned:
            if not owned:
                raise TierUnavailable(f"tier {tier_name!r} is busy with another transition; try again")
            view = await self.view(tier)
            for inst, iv in zip(tier.instances, view.instances, strict=True):
                if iv.state == S.READY and self.provider(inst).billed:
                    if await self.state.transition(inst.id, tier_name, S.READY, S.STOPPING, stage=""):
                        await self.stop_machine(tier, inst, "stopped by an admin", actor=actor)
                elif iv.state == S.STOPPING:
                    await self.stop_machine(tier, inst, "stopped by an admin", actor=actor)
                elif iv.state == S.FAILED:
                    await self.state.transition(inst.id, tier_name, S.FAILED, S.STOPPED, reason="")

    async def retire(self, tier: TierConfig) -> None:
        """A tier removed from the config: let its requests finish, then stop its machines."""
        for inst in tier.instances:
            if not self.provider(inst).billed:
                continue
            while True:
                await self.state.set_fields(inst.id, cancel="tier removed from the config")
                async with self.state.lock(tier.name, wait=5) as owned:
                    iv = await self.state.instance(inst.id, tier.name)
                    if owned and iv.state in (S.STOPPED, S.FAILED):
                        break
                    if owned and iv.state == S.STOPPING:
                        await self.stop_machine(tier, inst, "tier removed from the config")
                    elif owned and iv.state == S.READY and await self.state.transition(
                            inst.id, tier.name, S.READY, S.STOPPING, idle_ms=0, stage=""):
                        await self.stop_machine(tier, inst, "tier removed from the config")
                        break
                    elif owned and iv.state == S.STARTING:
                        await self.watch(tier, inst, "config reload")
                await asyncio.sleep(1)

    async def instance_ready(self, inst_id: str) -> bool:
        """A worker's own "I am ready" callback: faster than the next health poll."""
        found = self.cfg.instance(inst_id)
        if found is None:
            return False
        tier, _ = found
        await self.state.set_fields(inst_id, ready_cb=now_ms())
        await self.state.publish(tier.name, "ready_callback")
        return True

    # --- gateway start and stop ----------------------------------------------------------

    async def start(self) -> None:
        for provider in self.providers.values():
            for inst_id in await provider.on_gateway_start():
                log.warning("killed leftover worker %s of a gateway that died", inst_id)
        await self.ledger.epoch()
        await self.reconciler.at_start()

    async def shutdown(self) -> None:
        """Stop what dies with this process (its local workers) through the state machine, then the rest."""
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.tasks.cancel_all()
        for tier in self.cfg.tiers.values():
            for inst in tier.instances:
                provider = self.provider(inst)
                with contextlib.suppress(Exception):
                    iv = await self.state.instance(inst.id, tier.name)
                    if iv.state == S.STOPPED or not provider.dies_with_gateway(iv.handle):
                        continue
                    async with self.state.lock(tier.name, wait=5) as owned:
                        if not owned:
                            continue
                        iv = await self.state.instance(inst.id, tier.name)
                        stopping = iv.state == S.STOPPING or (iv.state in (S.READY, S.STARTING) and await
                                                              self.state.transition(inst.id, tier.name, iv.state,
                                                                                    S.STOPPING, stage=""))
                        if stopping:
                            await self.stop_machine(tier, inst, "the gateway is shutting down")
        for provider in self.providers.values():
            provider.on_gateway_stop()


def facts_of(tier: TierConfig, view: TierView, billed: Mapping[str, bool]) -> TierFacts:
    """The shared state of one tier as the plain facts `decide` reads (`billed`: per provider kind)."""
    return TierFacts(
        instances=tuple(
            InstanceFacts(
                id=iv.id, state=iv.state, inflight=iv.inflight, last_active=iv.last_active / 1000,
                boot_started=iv.boot_started / 1000, billed=billed.get(inst.provider, True),
                for_requests=iv.started_by == "request", standby_since=iv.standby_since / 1000,
            )
            for inst, iv in zip(tier.instances, view.instances, strict=True)
        ),
        queued=view.queued,
    )
