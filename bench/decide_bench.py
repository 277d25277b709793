"""How long one `decide` call takes: the gateway's supervisor calls it once a second per tier.

    .venv/bin/python bench/decide_bench.py

Prints microseconds per call for a ready adaptive tier with a full history (500 gaps, 5000
arrivals, 20 askers): steady state (nothing changed since the last second, the cached case)
and after a new gap (the histogram recomputed), and for a tier inside a cron pre-warm window.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from router.config import parse_config
from router.decide import Asker, History, InstanceFacts, TierFacts, decide
from router.machine import InstanceState

TOML = """
[tiers.t]
gpu = "RTX 4090D"
price_per_hour = 2.8
policy = "adaptive"
{extra}
[[tiers.t.instances]]
provider = "ecs"
instance_id = "i-1"
url = "http://{{private_ip}}:8000"
"""


def per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    now = datetime(2025, 3, 3, 14, 30, tzinfo=UTC).timestamp()
    gaps = [(now - 600 * k, float(30 + (k * 37) % 5000)) for k in range(500)]
    history = History(gaps=gaps, boots=[90.0] * 10, arrivals=[now - 500 * k for k in range(5000)][::-1],
                      askers=[Asker(now - 60 * k, k % 2 == 0, 0.0 if k % 2 == 0 else now - 30 * k) for k in range(20)],
                      visits=[now - 3000 * k for k in range(1000)][::-1], cold_waits=[70.0] * 20)
    facts = TierFacts((InstanceFacts("i-1", InstanceState.READY, last_active=now - 20),))
    tier = parse_config(TOML.format(extra="")).tiers["t"]
    steady = per_call(lambda i: decide(tier, facts, now + i * 1e-3, history), 20_000)
    fresh = per_call(lambda i: decide(tier, facts, now, History(gaps=[(now + i, 40.0), *gaps[:-1]], askers=history.askers)), 2_000)
    windowed = parse_config(TOML.format(extra='prewarm = [{cron = "0 9 * * 1-5", for = "9h"}]')).tiers["t"]
    window = per_call(lambda i: decide(windowed, facts, now + i * 1e-3, history), 2_000)
    print(f"decide, ready adaptive tier, steady state (cached): {steady:.1f} us/call")
    print(f"decide, after a new gap (histogram of 500 gaps recomputed): {fresh:.1f} us/call")
    print(f"decide, inside a cron pre-warm window: {window:.1f} us/call")


if __name__ == "__main__":
    main()
