"""The cost dashboard's numbers: GPU hours, cost, cold starts and cache hits per tier per day.

Read from the per-UTC-day counters in Redis; the always-on baseline for a day is the
tier's price for the hours of that day since this Redis first saw a gateway.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from router.gateway import Gateway
from router.state import now_ms

DAY_MS = 86_400_000


def last_days(n: int, now: int | None = None) -> list[str]:
    today = datetime.fromtimestamp((now or now_ms()) / 1000, UTC).date()
    return [(today - timedelta(days=i)).isoformat() for i in range(n - 1, -1, -1)]


def _day_start(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


async def daily(gw: Gateway, n_days: int) -> pd.DataFrame:
    """One row per (day, tier): gpu_hours, cost, always_on_cost, saving, cold_starts, cache hits and misses."""
    now = now_ms()
    days = last_days(n_days, now)
    epoch = await gw.state.epoch()
    rows = []
    for name, tier in gw.cfg.tiers.items():
        counts = await gw.state.days(name, days)
        view = await gw.state.tier(name)
        for day in days:
            start, end = _day_start(day), min(_day_start(day) + DAY_MS, now)
            c = counts.get(day, {})
            open_ms = sum(max(0, end - max(i.billing_since, start)) for i in view.instances
                          if i.billing_since and i.billing_since < end)
            hours = (c.get("gpu_ms", 0) + open_ms) / 3_600_000
            on_hours = max(0, end - max(start, epoch)) / 3_600_000
            cost = hours * tier.price_per_hour
            always = 0.0 if tier.always_on else on_hours * tier.price_per_hour
            hits = c.get("cache_hits", 0)
            misses = c.get("cache_misses", 0)  # counted by gateways that record misses per day
            rows.append({
                "day": day, "tier": name, "gpu_hours": round(hours, 4), "cost": round(cost, 4),
                "always_on_cost": round(always, 5), "saving": round(always - cost, 5) if always else 0.0,
                "cold_starts": c.get("starts", 0), "cache_hits": hits, "cache_misses": misses,
                "misses_known": int("cache_misses" in c),
            })
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per tier over the whole period, with the cache hit rate and the saving in percent."""
    if df.empty:
        return pd.DataFrame(columns=["tier", "GPU hours", "cost", "always-on cost", "saved", "saved %",
                                     "cold starts", "cache hits", "cache hit rate"])
    g = df.groupby("tier", sort=False).sum(numeric_only=True).reset_index()
    total = g.sum(numeric_only=True)
    total["tier"] = "all tiers"
    g = pd.concat([g, total.to_frame().T], ignore_index=True)

    def rate(r: pd.Series) -> str:
        asked = float(r["cache_hits"]) + float(r["cache_misses"])
        return f"{float(r['cache_hits']) / asked:.0%}" if asked and r["misses_known"] else "n/a"

    def pct(r: pd.Series) -> str:
        return f"{float(r['saving']) / float(r['always_on_cost']):.0%}" if float(r["always_on_cost"]) else "-"

    return pd.DataFrame({
        "tier": g["tier"], "GPU hours": g["gpu_hours"].astype(float).round(3), "cost": g["cost"].astype(float).round(4),
        "always-on cost": g["always_on_cost"].astype(float).round(4), "saved": g["saving"].astype(float).round(4),
        "saved %": g.apply(pct, axis=1), "cold starts": g["cold_starts"].astype(int),
        "cache hits": g["cache_hits"].astype(int), "cache hit rate": g.apply(rate, axis=1),
    })
