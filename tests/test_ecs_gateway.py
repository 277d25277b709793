"""End to end on "ECS": real gateways, the real Alibaba SDK, an emulated ECS API on loopback.

The emulator checks the SDK's signatures and simulates boots, stock-outs and spot reclaims;
while an instance is Running, a stand-in worker answers at its address. Only the cloud is
fake here, and it behaves like the cloud on the wire.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import chat, free_port, pids_listening, wait_for, write_config

emulator_mod = pytest.importorskip("tests.ecs_emulator", reason="the ECS emulator is not in this tree")

KEY_ID, SECRET = "LTAItestkey0001", "test-secret-0001"


class Workers:
    """Runs a stand-in worker while an emulated instance is Running, like a GPU image would."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.procs: dict[str, subprocess.Popen] = {}

    def running(self, instance_id: str, *_: object) -> None:
        if instance_id in self.ports and instance_id not in self.procs:
            self.procs[instance_id] = subprocess.Popen(
                [sys.executable, "-m", "worker", "--port", str(self.ports[instance_id]), "--boot-seconds", "0.3",
                 "--tokens-per-second", "0"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "TIERGATE_INSTANCE_ID": instance_id},  # the GPU image reads it from metadata
            )

    def stopped(self, instance_id: str, *_: object) -> None:
        proc = self.procs.pop(instance_id, None)
        if proc is not None:
            proc.terminate()
            proc.wait(10)

    def close(self) -> None:
        for iid in list(self.procs):
            self.stopped(iid)


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    emu = emulator_mod.EcsEmulator(access_key_id=KEY_ID, access_key_secret=SECRET)
    ports: dict[str, int] = {}
    workers = Workers(ports)
    emu.on_running = workers.running
    emu.on_stopped = workers.stopped
    emu.start()
    yield emu, ports
    emu.stop()
    workers.close()


def ecs_tiers(endpoint: str, pools: dict[str, list[tuple[str, int]]], *, fallback: dict[str, str] | None = None,
              extra: str = "") -> str:
    out = [f'[providers.ecs]\nregion = "cn-hangzhou"\nendpoint = "{endpoint}"\nprotocol = "http"\npoll_interval = "0.2s"\n']
    for name, instances in pools.items():
        out.append(f'[tiers.{name}]\ngpu = "RTX 4090D"\nprice_per_hour = 2.8\nidle_timeout = "2s"\nboot_timeout = "30s"\n'
                   f'boot_seconds = 1\nmodel = "test/{name}"\n{extra}')
        if fallback and name in fallback:
            out.append(f'fallback = "{fallback[name]}"')
        for iid, port in instances:
            out.append(f'[[tiers.{name}.instances]]\nprovider = "ecs"\ninstance_id = "{iid}"\n'
                       f'url = "http://{{private_ip}}:{port}"\nstopped_mode = "StopCharging"\n')
    return "\n".join(out)


def gateway_env() -> dict[str, str]:
    return {"ALIBABA_CLOUD_ACCESS_KEY_ID": KEY_ID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET, "TIERGATE_ADMIN_TOKEN": "adm"}


def add(emu, ports: dict[str, int], iid: str, **kw) -> int:
    port = free_port()
    ports[iid] = port
    emu.add_instance(iid, private_ip="127.0.0.1", boot_seconds=kw.pop("boot_seconds", 1.0), stop_seconds=0.3, **kw)
    return port


def actions(emu, name: str) -> list[dict]:
    return [params for action, params in emu.calls if action == name]


def test_cold_start_to_answer_then_idle_stop(tmp_path: Path, cloud, fresh_redis: str, gateway_factory) -> None:
    emu, ports = cloud
    port = add(emu, ports, "i-gpu1")
    cfg = write_config(tmp_path, ecs_tiers(emu.endpoint, {"gpu": [("i-gpu1", port)]}), cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis, env=gateway_env())
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json=chat("hello from the cloud"))
    assert r.status_code == 200, r.text
    assert int(r.headers["x-tiergate-wait-ms"]) >= 1000  # through Starting to Running, then the worker
    assert len(actions(emu, "StartInstance")) == 1
    wait_for(lambda: gw.tiers()["gpu"]["state"] == "stopped", timeout=30, what="idle stop")
    stops = actions(emu, "StopInstance")
    assert len(stops) == 1 and stops[0].get("StoppedMode") == "StopCharging"
    assert gw.tiers()["gpu"]["gpu_seconds"] > 2


def test_no_stock_falls_through_the_pool_then_to_the_fallback(tmp_path: Path, cloud, fresh_redis: str,
                                                              gateway_factory) -> None:
    emu, ports = cloud
    a, b = add(emu, ports, "i-a"), add(emu, ports, "i-b")
    c_port = add(emu, ports, "i-c")
    emu.set_no_stock("i-a", True)
    tiers = ecs_tiers(emu.endpoint, {"big": [("i-a", a), ("i-b", b)], "small": [("i-c", c_port)]},
                      fallback={"big": "small"})
    cfg = write_config(tmp_path, tiers, cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis, env=gateway_env())
    with gw.client() as c:
        r = c.post("/v1/chat/completions", json={**chat("one"), "model": "big"})
        assert r.status_code == 200 and r.headers["x-tiergate-tier"] == "big"  # i-b served it
        assert [p["InstanceId"] for p in actions(emu, "StartInstance")] == ["i-a", "i-b"]
        c.post("/api/tiers/big/stop", headers={"Authorization": "Bearer adm"})
        wait_for(lambda: gw.tiers()["big"]["state"] in ("stopped", "failed"), timeout=30, what="stop")
        emu.set_no_stock("i-b", True)
        r = c.post("/v1/chat/completions", json={**chat("two"), "model": "big"})
    assert r.status_code == 200
    assert r.headers["x-tiergate-tier"] == "small"
    assert "no capacity" in r.headers["x-tiergate-fallback"]


def test_gateway_killed_with_an_instance_running_is_adopted_and_stopped(tmp_path: Path, cloud, fresh_redis: str,
                                                                       gateway_factory) -> None:
    emu, ports = cloud
    port = add(emu, ports, "i-adopt")
    cfg = write_config(tmp_path, ecs_tiers(emu.endpoint, {"gpu": [("i-adopt", port)]}), cache="enabled = false")
    first = gateway_factory(cfg, redis_url=fresh_redis, env=gateway_env(), name="first")
    with first.client() as c:
        assert c.post("/v1/chat/completions", json=chat("hi")).status_code == 200
    first.kill(signal.SIGKILL)
    import redis

    redis.Redis.from_url(fresh_redis).flushall()  # even with the shared state lost...
    second = gateway_factory(cfg, redis_url=fresh_redis, env=gateway_env(), name="second")
    wait_for(lambda: second.tiers()["gpu"]["state"] == "stopped" and len(actions(emu, "StopInstance")) == 1,
             timeout=60, what="adoption and idle stop")  # ...the running machine is found and stopped


def test_spot_reclaim_is_noticed_and_the_next_request_starts_it_again(tmp_path: Path, cloud, fresh_redis: str,
                                                                      gateway_factory) -> None:
    emu, ports = cloud
    port = add(emu, ports, "i-spot", spot=True)
    tiers = ecs_tiers(emu.endpoint, {"spot": [("i-spot", port)]}).replace('idle_timeout = "2s"', 'idle_timeout = "1h"')
    cfg = write_config(tmp_path, tiers, cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis, env=gateway_env())
    with gw.client() as c:
        assert c.post("/v1/chat/completions", json=chat("one")).status_code == 200
        emu.reclaim("i-spot")
        wait_for(lambda: not pids_listening(port), timeout=20, what="the reclaimed machine's worker to go")
        r = c.post("/v1/chat/completions", json=chat("two"))
    assert r.status_code == 200  # retried after the reclaim was noticed
    assert len(actions(emu, "StartInstance")) == 2
