"""The simulator must agree with the live gateway, or its savings figures mean nothing.

A short trace (seconds instead of hours) is replayed twice: through a real gateway with
stand-in workers, and through `tiergate simulate` with the same config. Starts must match
exactly; billed GPU seconds within 30% or 2 s, whichever is larger (process start-up and
health polling make the live boot a little longer and noisier than `boot_seconds`).
The simulator takes every idle decision through `router.decide.decide`; once the gateway's
supervisor does too, this test compares the same function on a real and a virtual clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import chat, tier_toml, wait_for, worker_command, write_config

pytest.importorskip("router.simulate", reason="the simulator is not in this tree")

# Offsets in seconds: a burst, a gap shorter than the 2 s idle timeout, then one far longer (the
# live idle stop must be over before the next burst even when a loaded machine slows the boot).
OFFSETS = [0.0, 0.4, 0.8, 2.0, 9.0, 9.4]


def test_simulator_agrees_with_the_live_gateway(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    tiers = tier_toml("trust", idle="2s", command=worker_command(boot=1.0)).replace("boot_seconds = 1", "boot_seconds = 1.6")
    cfg = write_config(tmp_path, tiers, cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis)

    t0 = time.monotonic()
    with gw.client() as c:
        for n, offset in enumerate(OFFSETS):
            time.sleep(max(0.0, t0 + offset - time.monotonic()))
            assert c.post("/v1/chat/completions", json=chat(f"request {n}")).status_code == 200
    wait_for(lambda: gw.tiers()["trust"]["state"] == "stopped", timeout=30, what="the final idle stop")
    live = gw.tiers()["trust"]

    trace = tmp_path / "trace.csv"
    base = 1_700_000_000
    trace.write_text("timestamp,tier,duration_s\n" + "".join(f"{base + o},trust,0.05\n" for o in OFFSETS))
    res = subprocess.run(
        [sys.executable, "-m", "router.cli", "simulate", "--trace", str(trace), "--config", str(cfg), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert res.returncode == 0, res.stderr
    sim = json.loads(res.stdout)["tiers"]["trust"]

    print(f"live: {live['starts']} starts, {live['gpu_seconds']:.2f} s; simulated: {sim['starts']} starts, {sim['gpu_seconds']:.2f} s")
    assert sim["starts"] == live["starts"] == 2
    tolerance = max(2.0, 0.3 * live["gpu_seconds"])
    assert abs(sim["gpu_seconds"] - live["gpu_seconds"]) <= tolerance, (sim, live)
