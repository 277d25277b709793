"""The cost dashboard's tables: the gateway's per-day numbers (`Gateway.daily_costs`) as frames."""

from __future__ import annotations

import pandas as pd

from router.gateway import Gateway


async def daily(gw: Gateway, n_days: int) -> pd.DataFrame:
    """One row per (day, tier): gpu_hours, cost, always_on_cost, saving, cold_starts, cache hits and misses."""
    return pd.DataFrame(await gw.daily_costs(n_days))


async def policy(gw: Gateway) -> pd.DataFrame:
    """Per tier: the keep-alive in force and why, and what the last 7 days cost under the policy."""
    rows = [{
        "tier": p["tier"], "keep-alive now": p["keep_alive"], "why": p["why"],
        "requests (7 days)": p["week"]["requests"], "always-on cost": p["week"]["always_on_cost"],
        "cost under the policy": p["week"]["policy_cost"], "fixed 5 min would cost": p["week"]["fixed_5m_cost"],
        "saved": f"{p['week']['saving']:.2f} ({p['week']['saving_pct']:.0f}%)",
    } for p in await gw.idle_policy()]
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
