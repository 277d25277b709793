"""Tier lifecycle against real gateways, real workers and a real Redis.

Each test asserts what an operator or a user would notice: how many machines started,
whether a stream was cut, whether a worker process is still running.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import redis

from tests.conftest import chat, tier_toml, wait_for, worker_command, write_config


def events(redis_url: str, tier: str) -> list[dict]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [f for _, f in r.xrange("tg:events") if f.get("tier") == tier]
    finally:
        r.close()


def kinds(redis_url: str, tier: str) -> list[str]:
    return [e["event"] for e in events(redis_url, tier)]


def port_of(config: Path, tier: str) -> int:
    import tomllib

    return tomllib.loads(config.read_text())["tiers"][tier]["instances"][0]["port"]


def listening(port: int) -> bool:
    from tests.conftest import pids_listening

    return pids_listening(port)


async def herd(url: str, n: int, body: dict) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, trust_env=False) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(n)))


def test_a_herd_on_a_stopped_tier_starts_it_once(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    tiers = tier_toml("herd", command=worker_command(boot=1.5), extra="max_queue = 500")
    cfg = write_config(tmp_path, tiers, cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis)
    assert gw.tiers()["herd"]["state"] == "stopped"

    responses = asyncio.run(herd(gw.url, 120, chat("Describe it.")))

    assert [r.status_code for r in responses] == [200] * 120
    assert all("simulated" in r.json()["choices"][0]["message"]["content"] for r in responses)
    assert max(int(r.headers["x-tiergate-wait-ms"]) for r in responses) >= 1000  # they really waited for the boot
    assert kinds(fresh_redis, "herd").count("starting") == 1
    tier = gw.tiers()["herd"]
    assert tier["starts"] == 1
    assert tier["state"] == "ready"
    r = redis.Redis.from_url(fresh_redis)
    assert r.llen("tg:arrivals:herd") == 1  # one idle period ended, however many requests ended it
    r.close()


def test_idle_stop_never_cuts_a_stream(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    # 5 tokens/s: a default answer streams for several seconds, far past the 1 s idle timeout.
    cfg = write_config(tmp_path, tier_toml("slow", idle="1s", command=worker_command(boot=0.3, tps=8)),
                       cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis)
    t0 = time.monotonic()
    body = chat("tell me", stream=True, max_tokens=30)  # about 3.5 s at 8 tokens a second
    with gw.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        body = "".join(r.iter_text())
    took = time.monotonic() - t0
    assert took > 3, "the answer should have streamed for a while"
    assert body.rstrip().endswith("data: [DONE]")
    assert "stopping" not in kinds(fresh_redis, "slow")  # not stopped while streaming
    wait_for(lambda: gw.tiers()["slow"]["state"] == "stopped", timeout=15, what="idle stop after the stream")
    stop = next(e for e in events(fresh_redis, "slow") if e["event"] == "stopping")
    assert stop["reason"].startswith("idle ")  # an idle stop (the keep-alive follows), not another kind


def test_a_request_while_stopping_restarts_the_tier(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    # The worker takes 2 s to shut down, like a model server unloading, so the stop is observable.
    cmd = worker_command(boot=0.3, extra='"--stop-seconds", "2"')
    cfg = write_config(tmp_path, tier_toml("restart", idle="1s", command=cmd), cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis)
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("one")).status_code == 200
        wait_for(lambda: gw.tiers()["restart"]["state"] == "stopping", timeout=15, interval=0.02, what="stopping")
        r = c.post("/v1/chat/completions", json=chat("two"))
    assert r.status_code == 200
    assert int(r.headers["x-tiergate-wait-ms"]) > 500  # it waited for the stop, then for a new boot
    assert kinds(fresh_redis, "restart").count("starting") == 2
    assert gw.tiers()["restart"]["state"] == "ready"


def test_admin_start_and_stop(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    cfg = write_config(tmp_path, tier_toml("manual", idle="1h"), cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis, env={"TIERGATE_ADMIN_TOKEN": "s3cret"})
    with gw.client() as c:
        assert c.post("/api/tiers/manual/start").status_code == 401
        assert c.post("/api/tiers/manual/start", headers={"Authorization": "Bearer nope"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert c.post("/api/tiers/nope/start", headers=auth).status_code == 404
        r = c.post("/api/tiers/manual/start", headers=auth)
        assert r.status_code == 200
        assert r.json() == {"tier": "manual", "state": "starting"}  # not `stopped`, which reads as a failure
        wait_for(lambda: gw.tiers()["manual"]["state"] == "ready", timeout=20, what="admin start")
        assert c.post("/api/tiers/manual/stop", headers=auth).json()["state"] == "stopped"
    assert not listening(port_of(cfg, "manual"))
    admin_events = [e for e in events(fresh_redis, "manual") if e["event"] in ("starting", "stopping")]
    assert [e["reason"] for e in admin_events] == ["started by an admin", "stopped by an admin"]
    assert all(e["actor"].startswith("admin API") for e in admin_events)


def test_ready_callback_is_authenticated(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    cfg = write_config(tmp_path, tier_toml("cb"), cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis, env={"TIERGATE_CALLBACK_TOKEN": "cbt"})
    with gw.client() as c:
        assert c.post("/api/instances/cb-0/ready").status_code == 401
        assert c.post("/api/instances/zz/ready", headers={"Authorization": "Bearer cbt"}).status_code == 404
        assert c.post("/api/instances/cb-0/ready", headers={"Authorization": "Bearer cbt"}).json() == {
            "instance": "cb-0", "ok": True}


def test_status_command_shows_tiers_and_cost(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    import subprocess
    import sys

    cfg = write_config(tmp_path, tier_toml("stat"), cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis)
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200
    res = subprocess.run(
        [sys.executable, "-m", "router.cli", "status", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "TIERGATE_REDIS_URL": fresh_redis},
    )
    assert res.returncode == 0, res.stderr
    header, row = res.stdout.splitlines()[:2]
    assert header.split()[:3] == ["TIER", "GPU", "STATE"]
    assert row.split()[0] == "stat" and "ready" in row and "1/1" in row
    assert json.dumps(gw.tiers()["stat"]["starts"]) == "1"


def test_config_hot_reload_drains_and_stops_a_removed_tier(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    keep = tier_toml("keep", idle="1h")
    gone = tier_toml("gone", idle="1h", command=worker_command(boot=0.2, tps=10))
    cfg = write_config(tmp_path, keep + gone, cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis, env={"TIERGATE_ADMIN_TOKEN": "adm"})
    auth = {"Authorization": "Bearer adm"}
    original = cfg.read_text()
    gone_port = port_of(cfg, "gone")
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json={**chat("warm", max_tokens=2), "model": "gone"}).status_code == 200

        broken = original.replace('price_per_hour = 1.0', 'price_per_hour = "cheap"', 1)
        r = c.put("/api/config", content=broken, headers=auth)
        assert r.status_code == 400
        assert f"{cfg}:" in r.json()["error"]["message"] and "price_per_hour" in r.json()["error"]["message"]
        assert cfg.read_text() == original  # nothing half-written

        # a stream is in flight on `gone` while the config that removes it is saved
        long_one = {**chat("long one", stream=True, max_tokens=15), "model": "gone"}  # 1.5 s at 10 tokens a second
        with c.stream("POST", "/v1/chat/completions", json=long_one) as s:
            new_text = original[: original.index("[tiers.gone]")]
            assert c.put("/api/config", content=new_text, headers=auth).status_code == 200
            body = "".join(s.iter_text())
        assert body.rstrip().endswith("data: [DONE]")  # the drained stream finished
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["auto", "keep"]
    assert cfg.read_text() == new_text
    assert (tmp_path / "tiers.toml.bak").read_text() == original
    wait_for(lambda: not listening(gone_port), timeout=20, what="the removed tier's worker to stop")
    assert "tier removed from the config" in [e["reason"] for e in events(fresh_redis, "gone")][-1]


def test_the_ready_callback_makes_a_booting_tier_ready(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    """Ready is whichever comes first: the worker's health, or its own authenticated callback."""
    cfg = write_config(tmp_path, tier_toml("cbready", idle="1h", command=worker_command(boot=60)), cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis, env={"TIERGATE_ADMIN_TOKEN": "adm", "TIERGATE_CALLBACK_TOKEN": "cbt"})
    with gw.client() as c:
        c.post("/api/tiers/cbready/start", headers={"Authorization": "Bearer adm"})
        wait_for(lambda: gw.tiers()["cbready"]["state"] == "starting", timeout=10, what="boot to begin")
        time.sleep(1)
        assert gw.tiers()["cbready"]["state"] == "starting"  # the worker's port is still closed
        ok = c.post("/api/instances/cbready-0/ready", headers={"Authorization": "Bearer cbt"})
        assert ok.status_code == 200
        wait_for(lambda: gw.tiers()["cbready"]["state"] == "ready", timeout=5, what="ready after the callback")
    ready = [e for e in events(fresh_redis, "cbready") if e["event"] == "ready"]
    assert len(ready) == 1


def test_a_prewarm_window_starts_the_tier_and_keeps_it_up(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    extra = 'prewarm = [{cron = "* * * * *", for = "1h"}]'  # a window that is open right now
    cfg = write_config(tmp_path, tier_toml("morning", idle="1s", extra=extra), cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis)
    wait_for(lambda: gw.tiers()["morning"]["state"] == "ready", timeout=20, what="pre-warm with no request")
    time.sleep(2.5)  # two idle timeouts and more later, still up: not idled out inside its window
    assert gw.tiers()["morning"]["state"] == "ready"
    reasons = [e["reason"] for e in events(fresh_redis, "morning") if e["event"] == "starting"]
    assert len(reasons) == 1 and reasons[0].startswith("scheduled pre-warm window until")
