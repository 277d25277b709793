"""Comparing machines with the shared state, and making them agree.

A machine can change behind the gateway's back: it crashes, the cloud reclaims a spot
instance, someone starts or stops it by hand, a gateway dies after starting one. At
start-up, and then at each provider's own cadence (`check_every`), the supervisor asks the
provider what runs and, where that disagrees with the state, fixes the state under the
tier's lock: a machine that is gone is marked stopped and billed until now; one that runs
unknown is adopted, so it idles out like any other.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .config import InstanceConfig, TierConfig
from .machine import InstanceState as S
from .providers.base import MachineState, MachineStatus
from .state import now_ms

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

log = logging.getLogger("tiergate.reconcile")
LOCK_WAIT_AT_START = 15.0  # how long start-up reconcile waits for another process's transition


class Reconciler:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.state = lifecycle.state

    async def check(self, tier: TierConfig, inst: InstanceConfig, why: str) -> None:
        """Compare one instance with its machine; cheap when they agree (no lock taken)."""
        provider = self.lifecycle.provider(inst)
        iv = await self.state.instance(inst.id, tier.name)
        if not provider.reachable(iv.handle):
            return  # a machine of another host: a gateway there judges it
        st = await provider.status(inst, iv.handle)
        if _agrees(iv.state, st, adopt=self._adopts(inst)):
            return
        async with self.state.lock(tier.name, wait=2) as owned:
            if owned:
                await self._reconcile(tier, inst, st, why)

    async def at_start(self) -> None:
        """At start: make shared state agree with what the providers say is running."""
        for tier in self.lifecycle.cfg.tiers.values():
            async with self.state.lock(tier.name, wait=LOCK_WAIT_AT_START) as owned:
                if not owned:
                    continue
                for inst in tier.instances:
                    iv = await self.state.instance(inst.id, tier.name)
                    if not self.lifecycle.provider(inst).reachable(iv.handle):
                        continue
                    try:
                        st = await self.lifecycle.provider(inst).status(inst, iv.handle)
                    except Exception as exc:  # noqa: BLE001 - a cloud API down must not keep the gateway down
                        log.warning("cannot check %s at start-up (the supervisor retries): %s", inst.id, exc)
                        continue
                    await self._reconcile(tier, inst, st, "gateway start-up")

    def _adopts(self, inst: InstanceConfig) -> bool:
        return not self.lifecycle.provider(inst).billed or inst.adopt_running

    async def _reconcile(self, tier: TierConfig, inst: InstanceConfig, st: MachineStatus, why: str) -> None:
        """Under the tier lock: re-read, then fix a disagreement between state and machine.

        A machine that is gone (crash, spot reclaim, a stop done by hand) is marked stopped and
        billed until now; a machine running that the state does not know (a gateway crashed
        after starting it, someone started it by hand) is adopted, so it idles out like any other.
        """
        iv = await self.state.instance(inst.id, tier.name)  # the re-check under the lock
        if _agrees(iv.state, st, adopt=self._adopts(inst)):
            return
        if iv.state == S.READY:
            detail = "reclaimed by the cloud" if st.reclaimed else (st.detail or "the machine is not running")
            if st.state in (MachineState.RUNNING, MachineState.STARTING):  # running but reclaimed: stop it properly
                if await self.state.transition(inst.id, tier.name, S.READY, S.STOPPING, stage=""):
                    await self.lifecycle.stop_machine(tier, inst, f"{detail} ({why})")
                return
            await self.lifecycle.ledger.close_billing(tier.name, inst.id)
            if await self.state.transition(inst.id, tier.name, S.READY, S.STOPPED, stage="", url="", handle={}):
                await self.state.event(tier.name, "stopped", instance=inst.id, reason=f"{detail} ({why})")
            return
        if iv.state in (S.STOPPED, S.FAILED):
            provider = self.lifecycle.provider(inst)
            reason = "always-on URL" if not provider.billed else f"adopted a running machine ({why})"
            now = now_ms()
            if await self.state.transition(
                inst.id, tier.name, iv.state, S.STARTING, stage="loading model", boot_started=now, started_by="adopted",
                billing_since=now if provider.billed else "", reason="", url="", cancel="", ready_cb=0,
            ):
                await self.state.event(tier.name, "adopted", instance=inst.id, reason=reason)
                await self.lifecycle.watch(tier, inst, "")


def _agrees(state: S, st: MachineStatus, *, adopt: bool) -> bool:
    """Does the shared state match what the provider says? Transitions in progress always do."""
    if state in (S.STARTING, S.STOPPING):
        return True
    running = st.state in (MachineState.RUNNING, MachineState.STARTING)
    if state == S.READY:
        return running and not st.reclaimed
    return not running or not adopt

