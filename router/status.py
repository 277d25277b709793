"""What every tier is doing and what it cost: one snapshot for the API, the UI, the CLI and metrics.

Everything is read from shared Redis, so every gateway process reports the same. The
keep-alive shown (and when the tier stops) is `decide`'s own answer for this moment, so the
status says what the supervisor will do, not a second guess at it; money is `ledger`'s one
spend calculation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from .config import Config
from .decide import boot_eta, decide
from .ledger import DAY_MS, Ledger, day_gpu_ms, day_of, day_start_ms, spend
from .lifecycle import facts_of
from .state import State, now_ms


async def tiers_status(cfg: Config, state: State, ledger: Ledger, billed: Mapping[str, bool]) -> list[dict]:
    """The `/api/tiers` rows (see the README), plus today's numbers and the keep-alive in force."""
    now = now_ms()
    epoch = await ledger.epoch()
    today = day_of(now)
    midnight = day_start_ms(now)
    out = []
    for name, tier in cfg.tiers.items():
        view = await state.tier(name, [i.id for i in tier.instances])
        actions = decide(tier, facts_of(tier, view, billed), time.time(), await ledger.learnt(name))
        keeps = [a for a in actions if a.kind == "keep"]
        day = (await ledger.days(name, [today]))[today]
        today_s = day_gpu_ms(day.get("gpu_ms", 0), (i.billing_since for i in view.instances), midnight, now) / 1000
        billed_s = view.billed_ms(now) / 1000
        always_on = 0.0 if tier.always_on else (now - epoch) / 3_600_000 * tier.price_per_hour
        cost = (billed_s * tier.price_per_hour + view.standby_billed_ms(now) / 1000 * tier.standby_price_per_hour) / 3600
        idle = view.state == "ready" and view.inflight == 0 and view.last_active
        idle_for = (now - view.last_active) / 1000 if idle else None
        until = min((a.until for a in keeps), default=math.inf)
        out.append({
            "name": name,
            "gpu": tier.gpu,
            "state": str(view.state),
            "reason": view.failed_reason,
            "instances": [
                {"id": i.id, "provider": c.provider, "state": str(i.state), "url": i.url, "stage": i.stage,
                 "inflight": i.inflight}
                for i, c in zip(view.instances, tier.instances, strict=True)
            ],
            "inflight": view.inflight,
            "queued": view.queued,
            "last_active": view.last_active / 1000 if view.last_active else None,
            "idle_timeout": tier.idle_timeout,
            "idle_for": idle_for,
            "keep_alive": keeps[0].keep_alive if keeps else None,
            "keep_reason": keeps[0].reason if keeps else "",
            "stops_in": max(0.0, until - time.time()) if idle_for is not None and until != math.inf else None,
            "starts": view.starts,
            "gpu_seconds": round(billed_s, 3),
            "cost": round(cost, 6),
            "price_per_hour": tier.price_per_hour,
            "always_on_cost": round(always_on, 6),
            "saving": round(always_on - cost, 6) if always_on else 0.0,
            "boot_eta": round(boot_eta(tier, view.boots), 2),
            "model": tier.model,
            "today": {
                "starts": day.get("starts", 0),
                "gpu_seconds": round(today_s, 3),
                "cost": round(spend(tier, day, view.instances, midnight, now), 6),
                "cache_hits": day.get("cache_hits", 0),
                "requests": day.get("requests", 0),
            },
        })
    return out


async def daily(cfg: Config, state: State, ledger: Ledger, n_days: int) -> list[dict]:
    """One row per (day, tier) over the last `n_days` UTC days, for the cost dashboard."""
    now = now_ms()
    midnight = day_start_ms(now)
    starts = [midnight - k * DAY_MS for k in range(n_days - 1, -1, -1)]
    days = [day_of(s) for s in starts]
    epoch = await ledger.epoch()
    rows = []
    for name, tier in cfg.tiers.items():
        counts = await ledger.days(name, days)
        view = await state.tier(name, [i.id for i in tier.instances])
        for day, start in zip(days, starts, strict=True):
            c = counts.get(day, {})
            hours = day_gpu_ms(c.get("gpu_ms", 0), (i.billing_since for i in view.instances), start, now) / 3_600_000
            on_hours = max(0, min(start + DAY_MS, now) - max(start, epoch)) / 3_600_000
            cost = spend(tier, c, view.instances, start, now)
            always = 0.0 if tier.always_on else on_hours * tier.price_per_hour
            rows.append({
                "day": day, "tier": name, "gpu_hours": round(hours, 4), "cost": round(cost, 4),
                "always_on_cost": round(always, 5), "saving": round(always - cost, 5) if always else 0.0,
                "cold_starts": c.get("starts", 0), "cache_hits": c.get("cache_hits", 0),
                "cache_misses": c.get("cache_misses", 0), "misses_known": int("cache_misses" in c),
            })
    return rows
