"""What the configured policy is compared with, on the same trace and the same machine model.

Each baseline is a decider with `decide`'s signature, so it runs through the same virtual
clock (`machine.TierSim`): only the idle rule differs.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from .. import policy
from ..config import TierConfig
from ..decide import Action, History, TierFacts, boot_eta, decide
from ..machine import InstanceState
from .machine import Decider

FIXED_BASELINE_IDLE = 300.0
BEST_FIXED_GRID = (0, 30, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600, 7200, 14400)


def fixed(tier: TierConfig, idle: float) -> tuple[TierConfig, Decider]:
    """A plain timeout: the fixed policy with `idle`, through `decide` itself."""
    return tier.model_copy(update={"policy": "fixed", "idle_timeout": float(idle)}), decide


def previous_adaptive(tier: TierConfig) -> tuple[TierConfig, Decider]:
    """The adaptive policy before issue #12: one histogram of every gap (`policy.keep_alive`), no other signal."""
    copies: dict[float, TierConfig] = {}
    adaptive = tier.model_copy(update={"policy": "adaptive"})

    def decider(t: TierConfig, facts: TierFacts, now: float, history: History) -> list[Action]:
        k = policy.keep_alive(adaptive, [g for _end, g in history.gaps], boot_eta(t, history.boots) if history.boots else None)
        if k not in copies:
            copies[k] = t.model_copy(update={"policy": "fixed", "idle_timeout": k})
        return decide(copies[k], facts, now, history)

    return tier, decider


def oracle(tier: TierConfig, arrivals: Sequence[float]) -> tuple[TierConfig, Decider]:
    """Knowing the next arrival: keep on exactly through the gap iff that beats stop + restart; no pre-warm."""
    times = sorted(arrivals)
    plain = tier.model_copy(update={"prewarm": [], "prewarm_predict": False})
    wait_cost = policy.effective_wait_cost(plain)

    def decider(t: TierConfig, facts: TierFacts, now: float, history: History) -> list[Action]:
        out: list[Action] = []
        for inst in facts.instances:
            if inst.state != InstanceState.READY:
                continue
            if inst.inflight:
                out.append(Action("keep", inst.id, "serving", until=float("inf")))
                continue
            i = bisect.bisect_left(times, inst.last_active)
            gap = times[i] - inst.last_active if i < len(times) else float("inf")
            if gap != float("inf") and policy.offline_optimal_keep(gap, t.price_per_hour, t.boot_seconds, wait_cost):
                out.append(Action("keep", inst.id, "the next request comes soon", until=times[i] + 1.0))
            else:
                out.append(Action("stop", inst.id, "nothing comes soon enough"))
        return out

    return plain, decider
