"""The state machine's compare-and-swap and the owner lock, in process against a real Redis.

Table-driven in the style of llama-swap's TestProcess_SwapState: every pair of states is
tried, and exactly the pairs of `machine.TRANSITIONS` may happen.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
import redis.asyncio as aioredis

from router.machine import TRANSITIONS, InstanceState, allowed, tier_state
from router.state import ForbiddenTransition, LockLost, State, inst_key, leases_key, now_ms

S = InstanceState
PAIRS = list(itertools.product(S, S))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def state(fresh_redis: str):
    client = aioredis.Redis.from_url(fresh_redis, decode_responses=True)
    yield State(client, gateway_id="test")
    await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
async def test_every_transition_is_allowed_exactly_when_the_table_says(state: State, src: S, dst: S) -> None:
    await state.redis.hset(inst_key("i1"), mapping={"state": src.value, "stage": "old"})
    if allowed(src, dst):
        assert await state.transition("i1", "t", src, dst, stage="new")
        assert (await state.instance("i1")).state == dst
        assert (await state.instance("i1")).stage == "new"
    else:
        with pytest.raises(ForbiddenTransition):
            await state.transition("i1", "t", src, dst, stage="new")
        iv = await state.instance("i1")
        assert (iv.state, iv.stage) == (src, "old")  # nothing changed


@pytest.mark.anyio
async def test_a_stale_expectation_changes_nothing(state: State) -> None:
    """Two processes read `ready`; one stops it; the other's stop must then do nothing."""
    await state.redis.hset(inst_key("i1"), mapping={"state": "ready"})
    assert await state.transition("i1", "t", S.READY, S.STOPPING, reason="first")
    assert not await state.transition("i1", "t", S.READY, S.STOPPING, reason="second")
    assert (await state.instance("i1")).reason == "first"


@pytest.mark.anyio
async def test_an_unknown_instance_counts_as_stopped(state: State) -> None:
    assert (await state.instance("never-seen")).state == S.STOPPED
    assert await state.transition("never-seen", "t", S.STOPPED, S.STARTING)


@pytest.mark.anyio
async def test_the_idle_guard_refuses_a_leased_or_recently_active_instance(state: State) -> None:
    now = now_ms()
    await state.redis.hset(inst_key("i1"), mapping={"state": "ready", "last_active": str(now - 5_000)})
    await state.redis.zadd(leases_key("i1"), {"req-1": now + 10_000})
    assert not await state.transition("i1", "t", S.READY, S.STOPPING, idle_ms=1_000)  # a live lease
    await state.redis.zrem(leases_key("i1"), "req-1")
    assert not await state.transition("i1", "t", S.READY, S.STOPPING, idle_ms=60_000)  # idle 5 s < 60 s
    await state.redis.zadd(leases_key("i1"), {"req-2": now - 1})  # an expired lease does not count
    assert await state.transition("i1", "t", S.READY, S.STOPPING, idle_ms=1_000)


@pytest.mark.anyio
async def test_every_transition_is_announced_on_the_tiers_channel(state: State) -> None:
    pubsub = state.redis.pubsub()
    await pubsub.subscribe("tg:ch:t")
    await pubsub.get_message(timeout=1)  # the subscription confirmation
    await state.transition("i1", "t", S.STOPPED, S.STARTING)
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert msg is not None and msg["data"] == "starting"
    await pubsub.aclose()


def test_the_tier_is_what_its_most_useful_instance_is() -> None:
    assert tier_state([S.STOPPED, S.READY, S.STARTING]) == S.READY
    assert tier_state([S.STOPPED, S.STARTING]) == S.STARTING
    assert tier_state([S.FAILED, S.STOPPING]) == S.STOPPING
    assert tier_state([S.FAILED, S.STOPPED]) == S.FAILED
    assert tier_state([]) == S.STOPPED


def test_every_state_can_be_left_and_reached() -> None:
    reachable = {dst for targets in TRANSITIONS.values() for dst in targets}
    assert set(S) == set(TRANSITIONS) == reachable


@pytest.mark.anyio
async def test_one_owner_at_a_time(state: State) -> None:
    other = State(state.redis, gateway_id="other")
    async with state.lock("t") as mine, other.lock("t") as theirs:
        assert mine and not theirs
    async with other.lock("t") as theirs:
        assert theirs  # released on exit


@pytest.mark.anyio
async def test_a_lost_lock_cancels_the_owners_work(state: State, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the lock expires under its owner (a stall, Redis lost it), the owner must stop acting."""
    import router.state as state_mod

    monkeypatch.setattr(state_mod, "LOCK_RENEW_EVERY", 0.05)
    acted_after_loss = False
    with pytest.raises(LockLost):
        async with state.lock("t") as owned:
            assert owned
            await state.redis.set("tg:lock:t", "someone-else")  # another process took it over
            await asyncio.sleep(1.0)  # the renewal notices and cancels this task here
            acted_after_loss = True
    assert not acted_after_loss
    assert await state.redis.get("tg:lock:t") == "someone-else"  # and ours was not deleted over theirs


def test_design_md_holds_the_transition_table_of_the_code() -> None:
    from pathlib import Path

    from router.machine import table_markdown

    design = (Path(__file__).resolve().parents[1] / "router" / "DESIGN.md").read_text(encoding="utf-8")
    assert table_markdown() in design
