"""This week's saving for the admin dashboard: the tier's last 7 days replayed, policy vs always-on.

Pure: it takes rows (from `tg:trace`, e.g. through `rows_from_stream`) and a TierConfig and
returns numbers; the gateway reads the stream and shows the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..config import TierConfig
from . import baselines
from .machine import TierRun, play
from .report import boot_fn
from .trace import Request, Row, _take, service_seconds

WEEK = 7 * 86400.0


@dataclass(frozen=True)
class WeeklySaving:
    start: float  # epoch s: the replayed span
    end: float
    requests: int
    always_on_cost: float  # one instance up for the whole span
    policy_cost: float  # the tier's configured policy, replayed
    fixed_5m_cost: float  # a plain 5 minute timeout, for comparison
    saving: float  # always_on_cost - policy_cost
    saving_pct: float  # of always_on_cost (0 when there is nothing to compare)
    starts: int
    waited_requests: int


def rows_from_stream(entries: Iterable[Mapping[str, str]]) -> list[Row]:
    """`tg:trace` entries' fields (XRANGE values) as trace rows, closes and intents applied."""
    requests: list[Row] = []
    closes: dict[str, float] = {}
    intents: dict[tuple[str, str], float] = {}
    for fields in entries:
        _take(dict(fields), requests, closes, intents)
    from dataclasses import replace

    return sorted((replace(r, closed=closes.get(r.session)) if r.session in closes else r for r in requests),
                  key=lambda r: r.t)


def weekly_saving(rows: Sequence[Row], tier: TierConfig, end: float) -> WeeklySaving:
    """Replay the tier's requests of the 7 days before `end` under its policy, against always-on."""
    start = end - WEEK
    reqs = [Request(r.t, tier.name, service_seconds(r, tier), r.session, r.closed, r.intent_s)
            for r in rows if start <= r.t < end and (not r.tier or r.tier == tier.name)]
    always_on = WEEK * tier.price_per_hour / 3600
    if not reqs:
        return WeeklySaving(start, end, 0, always_on, 0.0, 0.0, always_on, 100.0 if always_on else 0.0, 0, 0)
    boot = boot_fn(tier, [])
    run: TierRun = play(tier, reqs, start, end, boot)
    fixed_tier, decider = baselines.fixed(tier, baselines.FIXED_BASELINE_IDLE)
    fixed = play(fixed_tier, reqs, start, end, boot, decider, intents=False)
    cost = run.cost(tier)
    return WeeklySaving(
        start, end, len(reqs), round(always_on, 4), round(cost, 4), round(fixed.cost(tier), 4),
        round(always_on - cost, 4), round(100 * (always_on - cost) / always_on, 1) if always_on else 0.0,
        run.starts, sum(1 for w in run.waits if w > 0),
    )
