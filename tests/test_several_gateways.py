"""Several gateways on one Redis, and a gateway that died: each machine is started once and stopped once.

What an operator would notice: how many starts the events show, whether a worker process is
still running after everyone agreed it should be stopped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import chat, tier_toml, wait_for, worker_command, write_config
from tests.test_lifecycle import herd, kinds, listening, port_of


def test_two_gateways_on_one_redis_start_and_stop_a_tier_once(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    cfg = write_config(tmp_path, tier_toml("shared", idle="2s", command=worker_command(boot=1.0)), cache="enabled = false")
    a = gateway_factory(cfg, redis_url=fresh_redis, name="a")
    b = gateway_factory(cfg, redis_url=fresh_redis, name="b")

    async def both() -> list[httpx.Response]:
        ra, rb = await asyncio.gather(herd(a.url, 30, chat("hi")), herd(b.url, 30, chat("hi")))
        return ra + rb

    responses = asyncio.run(both())
    assert [r.status_code for r in responses] == [200] * 60
    assert kinds(fresh_redis, "shared").count("starting") == 1
    assert b.tiers()["shared"]["state"] == "ready"  # b sees the state a may have created

    port = port_of(cfg, "shared")
    wait_for(lambda: a.tiers()["shared"]["state"] == "stopped", timeout=30, what="idle stop")
    assert kinds(fresh_redis, "shared").count("stopped") == 1
    wait_for(lambda: not listening(port), timeout=10, what="the worker to be gone")
    assert a.tiers()["shared"]["gpu_seconds"] > 2.0


def test_killed_gateway_leftover_workers_are_cleaned_up(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    # A shell wrapper: the gateway's death signal reaches the shell, not the worker it runs,
    # so only the pid-file cleanup at the next gateway start can stop this worker.
    port = None
    tiers = tier_toml("orphan", command='["sh", "-c", "tiergate worker --port {port} --boot-seconds 0.2; true"]')
    cfg = write_config(tmp_path, tiers, cache="enabled = false")
    env = {"PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}
    first = gateway_factory(cfg, redis_url=fresh_redis, env=env)
    with first.client() as c:
        assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200
    port = port_of(cfg, "orphan")
    first.kill(signal.SIGKILL)
    time.sleep(1)
    assert listening(port), "the wrapped worker should have survived its gateway"

    second = gateway_factory(cfg, redis_url=fresh_redis, env=env)
    wait_for(lambda: not listening(port), timeout=10, what="leftover worker killed")
    tier = second.tiers()["orphan"]
    assert tier["state"] == "stopped"
    assert tier["gpu_seconds"] > 0  # billed until it was found and stopped


def test_two_gateways_from_different_folders_agree_on_a_local_worker(tmp_path: Path, fresh_redis: str,
                                                                      gateway_factory) -> None:
    """Same config, same relative data_dir, different working directories, one Redis: the worker
    one gateway started is seen as running by the other, and idles out once (no adopt/stop flapping)."""
    text = tier_toml("twofold", idle="4s", command=worker_command(boot=0.3))
    text = text + "\n".join(
        f'[routing.tasks.{t}]\nspeed = "twofold"\nbalanced = "twofold"\nquality = "twofold"'
        for t in ("caption", "ocr", "document", "grounding", "html", "gui_agent", "video", "long_video"))
    configs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        cfg = tmp_path / name / "tiers.toml"
        cfg.write_text('[gateway]\ndata_dir = ".tiergate"\n\n[cache]\nenabled = false\n\n' + text)
        configs.append(cfg)
    a = gateway_factory(configs[0], redis_url=fresh_redis, name="a")
    b = gateway_factory(configs[1], redis_url=fresh_redis, name="b")
    with a.client() as c:
        assert c.post("/v1/chat/completions", json=chat("hello")).status_code == 200
    port = port_of(configs[0], "twofold")
    time.sleep(2.5)  # several supervisor passes and health checks of both gateways
    assert b.tiers()["twofold"]["state"] == "ready"  # b sees a's worker running, not a stranger or nothing
    wait_for(lambda: b.tiers()["twofold"]["state"] == "stopped", timeout=20, what="the idle stop")
    wait_for(lambda: not listening(port), timeout=10, what="the worker to be gone")
    seen = kinds(fresh_redis, "twofold")
    assert seen.count("starting") == 1 and seen.count("stopped") == 1 and "adopted" not in seen, seen
