"""The supervisor: every second, in every gateway process, find the work nobody owns.

For each tier it reads the shared state, asks `decide` what should happen (idle stops,
pre-warm starts, boots to give up, scale-out) and hands the actions to the lifecycle,
which re-checks everything under the tier's lock. It also resumes boots and stops whose
owner died, compares machines with the shared state at each provider's own cadence, and
keeps this process's leases alive and writes its bookkeeping. Several gateways run it at once; the lock and the
compare-and-swap transitions make that safe, and it is what makes a crash harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .config import Config, TierConfig
from .decide import Action, decide
from .leases import Leases
from .ledger import Ledger
from .lifecycle import Lifecycle, facts_of
from .machine import InstanceState as S
from .state import State

log = logging.getLogger("tiergate.supervisor")

EVERY = 1.0  # seconds between passes
HEARTBEAT_EVERY = 3.0  # seconds between lease refreshes


class Supervisor:
    def __init__(self, cfg: Config, state: State, leases: Leases, ledger: Ledger, lifecycle: Lifecycle) -> None:
        self.cfg = cfg
        self.state = state
        self.leases = leases
        self.ledger = ledger
        self.lifecycle = lifecycle
        self.decisions: dict[str, list[Action]] = {}  # tier -> the last pass's actions (for the status view)
        self._checked: dict[str, float] = {}
        self._loops: list[asyncio.Task] = []
        self._stopping = False

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._loop(self.pass_once, EVERY)),
                       asyncio.create_task(self._loop(self.leases.heartbeat, HEARTBEAT_EVERY)),
                       asyncio.create_task(self._loop(self.ledger.flush, EVERY))]

    async def stop(self) -> None:
        # Python 3.11's wait_for can swallow a cancel that lands as its inner call finishes
        # (seen under load); the flag ends the loop at its next turn, and the cancel is repeated.
        self._stopping = True
        pending = set(self._loops)
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        try:
            await self.ledger.flush()  # the last second's bookkeeping
        except Exception as exc:  # noqa: BLE001 - Redis away at exit: say what is lost
            log.warning("the last second's request counters were not written: %s", exc)

    async def _loop(self, fn: Callable[[], Awaitable[None]], every: float) -> None:
        while not self._stopping:
            await asyncio.sleep(every)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervisor pass failed")

    async def pass_once(self) -> None:
        for tier in list(self.cfg.tiers.values()):
            if self.lifecycle.busy(tier.name):
                continue  # this process is already moving the tier
            await self._tier(tier)

    async def _tier(self, tier: TierConfig) -> None:
        view = await self.lifecycle.view(tier)
        if any(i.state in (S.STARTING, S.STOPPING) for i in view.instances) and not await self.state.lock_holder(tier.name):
            self.lifecycle.ensure(tier.name, "resuming a transition whose owner is gone", start=False)
            return
        actions = decide(tier, facts_of(tier, view, self.lifecycle.billed), time.time(), await self.ledger.learnt(tier.name))
        self.decisions[tier.name] = actions
        by_id = {i.id: i for i in tier.instances}
        for a in actions:
            inst = by_id.get(a.instance)
            if a.kind == "start":
                self.lifecycle.ensure(tier.name, a.reason, started_by="prewarm")
            elif a.kind == "scale_out":
                self.lifecycle.ensure(tier.name, a.reason, started_by="scale", scale=True)
            elif a.kind == "stop" and inst:
                self.lifecycle.background(self.lifecycle.idle_stop(tier, inst, a))  # or out of standby
            elif a.kind == "force_stop" and inst:
                self.lifecycle.background(self.lifecycle.force_stop(tier, inst, a.reason))
            elif a.kind == "give_up_boot" and inst:
                await self.lifecycle.give_up_boot(tier, inst, a.reason)
        for inst, iv in zip(tier.instances, view.instances, strict=True):
            if iv.state in (S.STARTING, S.STOPPING) or not self._due(inst.id, self.lifecycle.provider(inst).check_every):
                continue
            why = "reconcile" if iv.state in (S.STOPPED, S.FAILED) else "periodic health check"
            self.lifecycle.background(self.lifecycle.reconciler.check(tier, inst, why))

    def _due(self, inst_id: str, every: float) -> bool:
        """A cloud API is asked at most every `check_every`; /proc is free to read."""
        last = self._checked.get(inst_id, 0.0)
        if time.monotonic() - last < every:
            return False
        self._checked[inst_id] = time.monotonic()
        return True

