"""The engine in process: a real Gateway on a real Redis with real worker processes, no HTTP server.

Fast enough to try what a person or a crash does to money: a request that gives up while
its tier boots, an answer nobody reads, a refused start, a budget that spans midnight, a
hot reload of limits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from router import leases as leases_mod
from router import supervisor as supervisor_mod
from router.config import load_config
from router.errors import PayloadTooLarge
from router.gateway import Gateway
from router.ledger import DAY_MS, day_gpu_ms, day_start_ms
from router.machine import InstanceState as S
from router.state import inst_key, now_ms
from tests.conftest import chat, tier_toml, worker_command, write_config


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def gateway(tmp_path: Path, redis_url: str, tiers: str, **kw: str) -> AsyncIterator[Gateway]:
    gw_text = f'redis_url = "{redis_url}"\n' + kw.pop("gateway", "")
    gw = Gateway(load_config(str(write_config(tmp_path, tiers, gateway=gw_text, **kw))))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.aclose()


async def until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await predicate():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def instance(gw: Gateway, tier: str, n: int = 0):
    return (await gw.lifecycle.view(gw.cfg.tiers[tier])).instances[n]


async def events(gw: Gateway, tier: str) -> list[dict]:
    return [e for e in reversed(await gw.events(500)) if e["tier"] == tier]


@pytest.mark.anyio
async def test_a_request_that_gives_up_during_the_boot_cancels_it(tmp_path: Path, fresh_redis: str) -> None:
    """Stop pressed (or the page closed) 1 s into a 5 s boot, nobody else waiting: the machine is stopped."""
    tiers = tier_toml("slow", command=worker_command(boot=5))
    async with gateway(tmp_path, fresh_redis, tiers, cache="enabled = false") as gw:
        asking = asyncio.create_task(gw.answer(gw.prepare(chat("will I wait?"))))
        await until(lambda: _state_is(gw, "slow", S.STARTING), what="the boot to begin")
        await asyncio.sleep(1)
        asking.cancel()
        iv = await until(lambda: _state_is(gw, "slow", S.STOPPED), timeout=10, what="the boot to be called off")
        assert iv.billing_since == 0  # billing closed
        stopped = [e for e in await events(gw, "slow") if e["event"] == "stopped"]
        assert "nobody is waiting" in stopped[-1]["reason"]
        billed = (await gw.status())[0]["gpu_seconds"]
        assert 0.5 < billed < 5  # the second or so of boot, not the boot and an idle timeout


@pytest.mark.anyio
async def test_the_boot_goes_on_while_someone_else_waits(tmp_path: Path, fresh_redis: str) -> None:
    tiers = tier_toml("shared", command=worker_command(boot=2))
    async with gateway(tmp_path, fresh_redis, tiers, cache="enabled = false") as gw:
        first = asyncio.create_task(gw.answer(gw.prepare(chat("first"))))
        second = asyncio.create_task(gw.answer(gw.prepare(chat("second"))))
        await until(lambda: _state_is(gw, "shared", S.STARTING), what="the boot to begin")
        await asyncio.sleep(0.5)
        first.cancel()
        answer = await asyncio.wait_for(second, 30)
        assert answer.response["choices"][0]["message"]["content"]
        row = (await gw.status())[0]
        assert row["state"] == "ready" and row["starts"] == 1


async def _state_is(gw: Gateway, tier: str, state: S):
    iv = await instance(gw, tier)
    return iv if iv.state == state else None


@pytest.mark.anyio
async def test_an_answer_nobody_reads_stops_holding_its_machine(
    tmp_path: Path, fresh_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed browser tab whose handler is never resumed: its lease lapses and the tier idles out."""
    monkeypatch.setattr(leases_mod, "STALL_SECONDS", 1.0)
    monkeypatch.setattr(leases_mod, "LEASE_TTL_MS", 1500)
    monkeypatch.setattr(supervisor_mod, "HEARTBEAT_EVERY", 0.3)
    tiers = tier_toml("orphan", idle="2s", command=worker_command(boot=0.2, tps=5))
    async with gateway(tmp_path, fresh_redis, tiers, cache="enabled = false") as gw:
        answer = await gw.answer(gw.prepare({**chat("tell me a long story"), "stream": True}))
        assert answer.chunks is not None  # handed over, and never read
        await until(lambda: _inflight_is(gw, 1), what="the lease to be held")
        await until(lambda: _inflight_is(gw, 0), timeout=10, what="the unread answer's lease to lapse")
        await until(lambda: _state_is(gw, "orphan", S.STOPPED), timeout=15, what="the idle stop")
        await answer.chunks.aclose()  # type: ignore[attr-defined]


async def _inflight_is(gw: Gateway, n: int) -> bool:
    return (await gw.status())[0]["inflight"] == n


@pytest.mark.anyio
async def test_a_start_the_provider_refuses_is_not_counted_or_billed(tmp_path: Path, fresh_redis: str) -> None:
    tiers = tier_toml("broken", command='["/nonexistent/model-server", "--port", "{port}"]')
    async with gateway(tmp_path, fresh_redis, tiers, cache="enabled = false") as gw:
        with pytest.raises(Exception, match="could not be started"):
            await gw.answer(gw.prepare(chat("anyone?")))
        row = (await gw.status())[0]
        assert row["state"] == "failed" and "cannot run" in row["reason"]
        assert row["starts"] == 0 and row["today"]["starts"] == 0 and row["gpu_seconds"] == 0


def test_spend_of_a_day_counts_only_that_day() -> None:
    midnight = day_start_ms(now_ms())
    now = midnight + 3_600_000  # 01:00
    # still billing since 23:00 yesterday: one hour today, not two
    assert day_gpu_ms(0, [midnight - 3_600_000], midnight, now) == 3_600_000
    assert day_gpu_ms(0, [midnight - 3_600_000], midnight - DAY_MS, now) == 3_600_000  # and one hour yesterday
    assert day_gpu_ms(500, [0, midnight + 1000], midnight, now) == 500 + 3_599_000


@pytest.mark.anyio
async def test_the_daily_budget_counts_today_only(tmp_path: Path, fresh_redis: str) -> None:
    """Billing since 23:00 yesterday at 1/h, a budget of today's hours + 0.5: not spent (yesterday's hour is not today's)."""
    now = now_ms()
    since = day_start_ms(now) - 3_600_000
    today_hours = (now - day_start_ms(now)) / 3_600_000
    tiers = tier_toml("budget", price=1.0, extra=f"daily_budget = {today_hours + 0.5:.4f}")
    async with gateway(tmp_path, fresh_redis, tiers) as gw:
        await gw.state.redis.hset(inst_key("budget-0"), mapping={"billing_since": str(since)})
        assert await gw.lifecycle.budget.refusal(gw.cfg.tiers["budget"]) == ""
        spent = (await gw.lifecycle.budget.spend_today([gw.cfg.tiers["budget"]]))["budget"]
        assert spent == pytest.approx(today_hours, abs=0.01)
        assert (await gw.status())[0]["today"]["cost"] == pytest.approx(spent, abs=0.01)  # one spend, everywhere
        await gw.state.redis.hset("tg:day:budget:" + time.strftime("%Y-%m-%d", time.gmtime()), "gpu_ms", 3_600_000)
        assert "daily budget" in await gw.lifecycle.budget.refusal(gw.cfg.tiers["budget"])  # one more closed hour: spent


@pytest.mark.anyio
async def test_a_hot_reload_applies_limits_timeouts_and_cloud_settings(tmp_path: Path, fresh_redis: str) -> None:
    from tests.test_api import image_chat, png

    tiers = tier_toml("reload")
    async with gateway(tmp_path, fresh_redis, tiers) as gw:
        body = image_chat(png(120, 120))
        gw.prepare(body)  # fits the default 20 MiB
        text = Path(gw.cfg.path).read_text().replace("[gateway]\n", '[gateway]\nmax_image_size = "100B"\n'
                                                     'request_timeout = "42s"\n', 1)
        text += '\n[providers.ecs]\nregion = "cn-shanghai"\n'
        assert await gw.save_config(text) == []
        with pytest.raises(PayloadTooLarge):
            gw.prepare(body)
        assert gw.backends["openai"].timeout == 42
        assert gw.cfg.providers.ecs.region == "cn-shanghai"


@pytest.mark.anyio
async def test_the_dashboard_says_the_keep_alive_and_replays_the_week(tmp_path: Path, fresh_redis: str) -> None:
    """The admin sees what the policy chose now and why, and what last week cost under it (from the live trace)."""
    tiers = tier_toml("dash", idle="2m", command=worker_command(boot=0.2), extra='policy = "adaptive"')
    async with gateway(tmp_path, fresh_redis, tiers, cache="enabled = false") as gw:
        await gw.answer(gw.prepare({**chat("hello"), "user": "alice"}), asker="user:alice")
        await gw.ledger.flush()
        (row,) = await gw.idle_policy()
        assert row["tier"] == "dash" and row["keep_alive"] == "2.0 min"  # fewer than 10 gaps: the idle_timeout
        assert "gap" in row["why"] or "idle_timeout" in row["why"]
        week = row["week"]
        assert week["requests"] == 1 and week["starts"] == 1
        assert 0 < week["policy_cost"] < week["always_on_cost"] and week["saving"] > 0
