"""How long a tier stays up after its last request ends.

`fixed` is the tier's `idle_timeout`. `adaptive` learns the keep-alive from the tier's recent
idle gaps (time from the end of the last request to the next arrival). Keeping the machine up
through a gap of length g costs `price * g`; stopping costs a restart when the next request
comes: the boot is billed (`price * boot`) and that user waits the boot
(`wait_cost_per_minute * boot / 60`). Knowing the future you would keep on iff `g` is below
that break-even (`offline_optimal_keep`); not knowing it, `adaptive` picks the keep-alive K
that minimises the expected cost over the empirical gap distribution:

    cost(K) = E[price * min(g, K)] + P(g > K) * (price * boot + wait_cost_per_minute * boot / 60)

It is the ski-rental break-even generalised to a learnt distribution, in the spirit of the
hybrid histogram policy of "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020).

This module holds the arithmetic. The whole adaptive rule (open pages, the visit forecast,
restarts priced by their measured wait, standby) is `router.decide.decide`, which the
simulator replays; `keep_alive` is the gap-histogram part alone, what the gateway ran before
issue #12, kept for the supervisor until it calls `decide` and as the simulator's
`previous_adaptive` baseline.

`wait_cost_per_minute = 0` (the default) does not mean "waiting is free" (that would stop the
machine after nearly every request, since a gap only has to outlast the boot to make a restart
cheaper); it means "value waiting as my `idle_timeout` does": the wait cost that makes
`idle_timeout` the break-even gap (`effective_wait_cost`). Adaptive then keeps the trade-off
the admin already chose, and spends it where the gap distribution says it pays.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

from .config import TierConfig

MIN_GAPS = 10  # fewer observed gaps than this: not a distribution yet, use idle_timeout
MAX_KEEP_ALIVE = 4 * 3600.0  # a gap longer than 4 h is "gone for the day"; never idle longer
MARGIN = 1.1  # keep 10% past the chosen gap, so a gap a little longer than last time still fits
MAX_GAPS = 500  # the gateway keeps the newest 500 gaps; older ones describe a different week


def restart_cost(price_per_hour: float, boot_seconds: float, wait_cost_per_minute: float) -> float:
    """What stopping costs once the next request comes: the billed boot plus the user's wait."""
    return price_per_hour * boot_seconds / 3600 + wait_cost_per_minute * boot_seconds / 60


def break_even_gap(price_per_hour: float, boot_seconds: float, wait_cost_per_minute: float) -> float:
    """The gap length at which keeping on and stopping cost the same (inf for a free machine)."""
    if price_per_hour <= 0:
        return float("inf")
    return restart_cost(price_per_hour, boot_seconds, wait_cost_per_minute) * 3600 / price_per_hour


def effective_wait_cost(tier: TierConfig, boot_seconds: float | None = None) -> float:
    """The configured wait cost, or when 0 the one whose break-even gap is the tier's idle_timeout."""
    if tier.wait_cost_per_minute > 0:
        return tier.wait_cost_per_minute
    boot = tier.boot_seconds if boot_seconds is None else boot_seconds
    if boot <= 0:
        return 0.0
    return max(0.0, tier.idle_timeout - boot) * tier.price_per_hour / 3600 / (boot / 60)


def offline_optimal_keep(gap: float, price: float, boot_seconds: float, wait_cost_per_minute: float) -> bool:
    """Knowing the gap in advance: keep the machine on through it iff that is cheaper than a restart."""
    return price * gap / 3600 < restart_cost(price, boot_seconds, wait_cost_per_minute)


def keep_alive(tier: TierConfig, gaps: Sequence[float], boot_seconds: float | None = None) -> float:
    """Seconds to keep an idle instance before stopping it.

    `gaps` are recent idle gaps in seconds, newest first; `boot_seconds` is the expected boot
    (recent history), defaulting to the configured estimate.
    """
    if tier.policy == "fixed" or len(gaps) < MIN_GAPS:
        return tier.idle_timeout
    boot = tier.boot_seconds if boot_seconds is None else boot_seconds
    recent = tuple(float(g) for g in itertools.islice(gaps, MAX_GAPS))  # a list or a deque
    return _adaptive(tier.price_per_hour, boot, effective_wait_cost(tier, boot), recent)


@functools.lru_cache(maxsize=512)
def _adaptive(price: float, boot: float, wait_cost_per_minute: float, gaps: tuple[float, ...]) -> float:
    """The argmin of the expected cost over K in {0} + observed gaps (cached: called every second)."""
    k = best_keep_alive(sorted(gaps), price, boot, wait_cost_per_minute)
    return min(k * MARGIN, MAX_KEEP_ALIVE)


def best_keep_alive(sorted_gaps: Sequence[float], price: float, boot: float, wait_cost_per_minute: float) -> float:
    """One pass over the sorted gaps with running sums; ties go to the longer keep-alive (fewer waits).

    The expected cost is linear between observed gaps and drops at each one, so the minimum
    is at 0 or at an observed gap: those are the only candidates.
    """
    n = len(sorted_gaps)
    per_second = price / 3600
    restart = restart_cost(price, boot, wait_cost_per_minute)
    best_k, best_cost = 0.0, restart  # K = 0: every gap ends in a restart
    kept = 0.0  # sum of the gaps <= K (kept on through entirely)
    for i, g in enumerate(sorted_gaps):
        if g > MAX_KEEP_ALIVE:
            break  # longer gaps always end in a restart
        kept += g
        longer = n - i - 1  # gaps > K: kept on for K, then a restart
        if i + 1 < n and sorted_gaps[i + 1] == g:
            continue  # evaluate a repeated value once, with all its copies counted as kept
        cost = (per_second * (kept + longer * g) + longer * restart) / n
        if cost <= best_cost:
            best_k, best_cost = g, cost
    return best_k
