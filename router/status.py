"""What every tier is doing and what it cost: one snapshot for the API, the UI, the CLI and metrics."""

from __future__ import annotations

from .config import Config
from .lifecycle import boot_eta
from .state import State, now_ms


async def tiers_status(state: State, cfg: Config) -> list[dict]:
    """The `/api/tiers` rows, read from shared state, so every gateway process reports the same."""
    now = now_ms()
    epoch = await state.epoch()
    out = []
    for name, tier in cfg.tiers.items():
        view = await state.tier(name)
        billed = view.billed_ms(now) / 1000
        always_on = (now - epoch) / 3_600_000 * tier.price_per_hour
        cost = billed / 3600 * tier.price_per_hour
        idle = view.state == "ready" and view.inflight == 0 and view.last_active
        idle_for = (now - view.last_active) / 1000 if idle else None
        out.append({
            "name": name,
            "gpu": tier.gpu,
            "state": view.state,
            "reason": view.failed_reason,
            "instances": [
                {"id": i.id, "provider": c.provider, "state": i.state, "url": i.url, "stage": i.stage, "inflight": i.inflight}
                for i, c in zip(view.instances, tier.instances, strict=True)
            ],
            "inflight": view.inflight,
            "queued": view.queued,
            "last_active": view.last_active / 1000 if view.last_active else None,
            "idle_timeout": tier.idle_timeout,
            "idle_for": idle_for,
            "stops_in": max(0.0, tier.idle_timeout - idle_for) if idle_for is not None else None,
            "starts": view.starts,
            "gpu_seconds": round(billed, 3),
            "cost": round(cost, 6),
            "price_per_hour": tier.price_per_hour,
            "always_on_cost": round(always_on, 6),
            "saving": round(always_on - cost, 6),
            "boot_eta": round(boot_eta(tier, view.boots), 2),
            "model": tier.model,
        })
    return out
