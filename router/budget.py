"""Daily budgets: refuse a start once today's spend reached what an admin allowed.

Today's spend is `ledger.spend` for the current UTC day (closed intervals split by day,
open ones counted from midnight), the same number the status table and the dashboard show.
"""

from __future__ import annotations

from .config import Config, TierConfig
from .ledger import Ledger, day_of, day_start_ms, spend
from .state import State, now_ms


class Budget:
    def __init__(self, cfg: Config, state: State, ledger: Ledger) -> None:
        self.cfg = cfg
        self.state = state
        self.ledger = ledger

    async def refusal(self, tier: TierConfig) -> str:
        """Refuse a start once today's spend (closed plus still billing) reached a daily budget."""
        overall = self.cfg.gateway.daily_budget
        if not tier.daily_budget and not overall:
            return ""
        spent = await self.spend_today([tier] if not overall else list(self.cfg.tiers.values()))
        if tier.daily_budget and spent.get(tier.name, 0.0) >= tier.daily_budget:
            return f"daily budget of tier {tier.name!r} reached ({spent[tier.name]:.2f} of {tier.daily_budget:.2f})"
        if overall and sum(spent.values()) >= overall:
            return f"overall daily budget reached ({sum(spent.values()):.2f} of {overall:.2f})"
        return ""

    async def spend_today(self, tiers: list[TierConfig]) -> dict[str, float]:
        """Today's cost per tier (UTC day): the one spend calculation, see `ledger.day_gpu_ms`."""
        now = now_ms()
        today = day_of(now)
        out: dict[str, float] = {}
        for t in tiers:
            day = (await self.ledger.days(t.name, [today]))[today]
            view = await self.state.tier(t.name, [i.id for i in t.instances])
            out[t.name] = spend(t, day, view.instances, day_start_ms(now), now)
        return out
