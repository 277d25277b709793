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
from .trace import Request

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


def hour_of_week_bound(tier: TierConfig, reqs: Sequence[Request], wait_budget: float, buckets: int = 168) -> float:
    """A floor under the GPU cost of any idle rule that sees only the hour of the week and the idle time.

    Such a rule keeps an idle instance some K seconds per hour-of-week bucket. Even choosing
    the 168 K's knowing the whole trace, subject to total waiting <= `wait_budget` seconds,
    it cannot cost less than this: the Lagrangian dual max over a wait price l of
    sum over buckets of min over K (cost + l * wait) - l * wait_budget. Gaps are taken from
    the trace served without boot delays (every rule shares the busy time and the first boot).
    When the floor is above 1.3x the offline optimum, no amount of tuning meets the target
    with these signals: the number that proves it. `buckets=1` is the floor for rules that
    see the idle time alone (one keep-alive for every gap).
    """
    price, boot = tier.price_per_hour / 3600, tier.boot_seconds
    busy_until, busy = -float("inf"), 0.0
    by_bucket: dict[int, list[float]] = {}
    for r in sorted(reqs, key=lambda q: q.t):
        if r.t >= busy_until:
            if busy_until > -float("inf"):
                by_bucket.setdefault(int((busy_until % (7 * 86400)) // 3600) % buckets, []).append(r.t - busy_until)
            busy += r.service
            busy_until = r.t + r.service
        else:
            busy += max(0.0, r.t + r.service - busy_until)
            busy_until = max(busy_until, r.t + r.service)
    fixed_cost = price * (busy + boot)  # every rule pays the busy time and the first boot

    def bucket_best(gaps: list[float], lam: float) -> tuple[float, float]:
        """(cost, wait) of the K minimising cost + lam * wait in one bucket; K in {0} + its gaps."""
        gaps = sorted(gaps)
        n = len(gaps)
        best = (n * price * boot, n * boot)  # K = 0: every gap ends in a restart
        kept = 0.0
        for i, g in enumerate(gaps):
            kept += g
            longer = n - i - 1
            cost = price * (kept + longer * g) + longer * price * boot
            wait = longer * boot
            if cost + lam * wait < best[0] + lam * best[1]:
                best = (cost, wait)
        return best

    bound = 0.0
    for lam in [0.0] + [price * 2 ** (k / 4) for k in range(-40, 60)]:
        cost = wait = 0.0
        for gaps in by_bucket.values():
            c, w = bucket_best(gaps, lam)
            cost, wait = cost + c, wait + w
        bound = max(bound, fixed_cost + cost + lam * (wait - wait_budget))
    return bound
