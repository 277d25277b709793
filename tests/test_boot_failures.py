"""Boots that go wrong: a machine that never becomes ready, one whose worker dies while booting.

The user gets an answer from the fallback or a 503 naming the tier, and the broken machine is
stopped rather than left billing.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import chat, tier_toml, worker_command, write_config
from tests.test_lifecycle import kinds, listening, port_of


def test_boot_timeout_fails_the_tier_and_falls_back(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    tiers = tier_toml("never", boot_timeout="2s", fallback="backup", command=worker_command(boot=60)) + tier_toml(
        "backup", price=2.8, command=worker_command(boot=0.3)
    )
    cfg = write_config(tmp_path, tiers, cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis)
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json=chat("hello"))
    assert r.status_code == 200
    assert r.headers["x-tiergate-tier"] == "backup"
    assert "never" in r.headers["x-tiergate-fallback"]
    never = gw.tiers()["never"]
    assert never["state"] == "failed"
    assert "no ready worker after boot_timeout 2 s" in never["reason"]
    assert not listening(port_of(cfg, "never"))  # the hung machine was stopped, not left billing


def test_boot_timeout_without_fallback_is_a_503_naming_the_tier(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    cfg = write_config(tmp_path, tier_toml("lonely", boot_timeout="1s", command=worker_command(boot=60)),
                       cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis)
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json=chat("hello"))
        assert r.status_code == 503
        err = r.json()["error"]
        assert "lonely" in err["message"] and "boot_timeout" in err["message"]
        # the gateway keeps serving, and a later request retries the start
        assert c.get("/healthz").status_code == 200
        c.post("/v1/chat/completions", json=chat("again"))
    assert kinds(fresh_redis, "lonely").count("starting") == 2


def test_a_worker_that_dies_while_booting_fails_fast(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    cfg = write_config(tmp_path, tier_toml("broken", boot_timeout="60s", command=worker_command(boot=0.2, extra='"--fail-boot"')),
                       cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis)
    t0 = time.monotonic()
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json=chat("hello"))
    assert r.status_code == 503
    assert time.monotonic() - t0 < 20  # not the 60 s boot timeout
    assert "exited with code 3" in r.json()["error"]["message"]
