"""Shared state in Redis: what every gateway process must agree on.

Several gateway processes may share one Redis, so nothing that decides money lives in a
Python variable: instance states, in-flight leases, the per-tier transition lock, boot
history, the cost ledger and the lifecycle event stream are all here. Atomic checks that
race with requests (claim an instance vs. begin its idle stop) are Lua scripts, so Redis
orders them and neither can act on a stale read.

Keys (prefix `tg:`):
  tier:{t}        hash  failed_reason, failed_at, last_active (ms)
  inst:{id}       hash  state, tier, url, stage, boot_started, billing_since, ready_cb, reason, pid
  leases:{id}     zset  lease -> expiry ms (requests being served by this instance)
  queue:{t}       zset  lease -> expiry ms (requests waiting for the tier)
  lock:{t}        str   owner token of the one process allowed to change the tier
  boots:{t}       list  recent cold-start seconds (newest first)
  gaps:{t}        list  recent idle gaps in seconds (newest first), for the adaptive policy
  arrivals:{t}    list  when requests arrived at an idle tier (epoch s), for predictive pre-warm
  ledger:{t}      hash  gpu_ms, starts
  day:{t}:{date}  hash  gpu_ms, starts, requests, cache_hits (per UTC day, for the dashboard)
  events          stream  lifecycle events (who started or stopped what, when, why)
  epoch           str   when this Redis first saw a gateway (ms): the always-on baseline's start
  ch:{t}          pub/sub channel announcing every change of tier t
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis.asyncio as aioredis

from .config import Config

PREFIX = "tg:"
LEASE_TTL_MS = 15_000  # a crashed gateway's leases stop counting after this
LOCK_TTL_MS = 10_000  # a crashed owner's lock frees after this
HISTORY = 50

INSTANCE_STATES = ("stopped", "starting", "ready", "stopping", "failed")


def now_ms() -> int:
    return int(time.time() * 1000)


def day_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


# Claim a ready instance for a request, atomically with the lease, so an idle stop that
# runs concurrently either sees the lease (and keeps the instance) or ran first (and the
# claim sees `stopping`). Packs onto the first instance with room, so extras idle out first.
_CLAIM = """
local now = tonumber(ARGV[1]); local expiry = tonumber(ARGV[2]); local lease = ARGV[3]
local cap = tonumber(ARGV[4]); local total = 0; local best = nil; local best_n = nil; local first_room = nil
for i, id in ipairs(KEYS) do
  if redis.call('HGET', 'tg:inst:' .. id, 'state') == 'ready' then
    redis.call('ZREMRANGEBYSCORE', 'tg:leases:' .. id, '-inf', now)
    local n = redis.call('ZCARD', 'tg:leases:' .. id)
    total = total + n
    if first_room == nil and (cap == 0 or n < cap) then first_room = id end
    if best == nil or n < best_n then best = id; best_n = n end
  end
end
local pick = first_room or best
if pick == nil then return nil end
redis.call('ZADD', 'tg:leases:' .. pick, expiry, lease)
local full = 0
if first_room == nil then full = 1 end
return {pick, redis.call('HGET', 'tg:inst:' .. pick, 'url'), full, total}
"""

# Begin an idle stop only if the instance is still ready, serves nobody, and has been
# idle long enough: the re-check under the lock, done where requests cannot interleave.
_BEGIN_IDLE_STOP = """
local now = tonumber(ARGV[1]); local idle_ms = tonumber(ARGV[2])
if redis.call('HGET', KEYS[1], 'state') ~= 'ready' then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_active') or '0')
if now - last < idle_ms then return 0 end
redis.call('HSET', KEYS[1], 'state', 'stopping', 'stage', '', 'changed_at', now)
return 1
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass
class InstanceView:
    id: str
    tier: str
    state: str = "stopped"
    url: str = ""
    stage: str = ""
    reason: str = ""
    boot_started: int = 0
    billing_since: int = 0
    last_active: int = 0
    ready_at: int = 0
    ready_cb: int = 0
    pid: int = 0
    inflight: int = 0

    @classmethod
    def from_hash(cls, inst_id: str, tier: str, h: dict[str, str], inflight: int) -> InstanceView:
        def i(key: str) -> int:
            return int(h.get(key) or 0)

        return cls(
            id=inst_id,
            tier=h.get("tier") or tier,
            state=h.get("state") or "stopped",
            url=h.get("url", ""),
            stage=h.get("stage", ""),
            reason=h.get("reason", ""),
            boot_started=i("boot_started"),
            billing_since=i("billing_since"),
            last_active=i("last_active"),
            ready_at=i("ready_at"),
            ready_cb=i("ready_cb"),
            pid=i("pid"),
            inflight=inflight,
        )


@dataclass
class TierView:
    name: str
    instances: list[InstanceView]
    failed_reason: str = ""
    failed_at: int = 0
    queued: int = 0
    gpu_ms: int = 0
    starts: int = 0
    boots: list[float] = field(default_factory=list)

    @property
    def state(self) -> str:
        """The tier's state follows from its instances: any ready makes it ready, and so on."""
        states = {i.state for i in self.instances}
        for s in ("ready", "starting", "stopping"):
            if s in states:
                return s
        return "failed" if self.failed_reason else "stopped"

    @property
    def inflight(self) -> int:
        return sum(i.inflight for i in self.instances)

    @property
    def last_active(self) -> int:
        return max((i.last_active for i in self.instances), default=0)

    def billed_ms(self, at: int) -> int:
        """Closed billing plus the instances billing right now."""
        return self.gpu_ms + sum(max(0, at - i.billing_since) for i in self.instances if i.billing_since)


class State:
    """One gateway process's handle on the shared state."""

    def __init__(self, redis: aioredis.Redis, cfg: Config, gateway_id: str | None = None) -> None:
        self.redis = redis
        self.cfg = cfg
        self.gateway_id = gateway_id or uuid.uuid4().hex[:12]
        self._claim = redis.register_script(_CLAIM)
        self._begin_idle_stop = redis.register_script(_BEGIN_IDLE_STOP)
        self._unlock = redis.register_script(_UNLOCK)
        self._renew = redis.register_script(_RENEW)
        self._held: dict[str, tuple[str, str]] = {}  # lease -> (zset key, ...)

    # --- instances -------------------------------------------------------------------

    async def instance(self, inst_id: str, tier: str = "") -> InstanceView:
        h = await self.redis.hgetall(f"{PREFIX}inst:{inst_id}")
        n = await self.redis.zcount(f"{PREFIX}leases:{inst_id}", now_ms(), "+inf")
        return InstanceView.from_hash(inst_id, tier, h, n)

    async def set_instance(self, inst_id: str, **fields: object) -> None:
        await self.redis.hset(
            f"{PREFIX}inst:{inst_id}", mapping={k: str(v) for k, v in fields.items()} | {"changed_at": str(now_ms())}
        )

    async def tier(self, name: str) -> TierView:
        """A consistent-enough snapshot for display and decisions that are re-checked under the lock."""
        tier_cfg = self.cfg.tiers[name]
        now = now_ms()
        pipe = self.redis.pipeline(transaction=False)
        for inst in tier_cfg.instances:
            pipe.hgetall(f"{PREFIX}inst:{inst.id}")
            pipe.zcount(f"{PREFIX}leases:{inst.id}", now, "+inf")
        pipe.hgetall(f"{PREFIX}tier:{name}")
        pipe.zcount(f"{PREFIX}queue:{name}", now, "+inf")
        pipe.hgetall(f"{PREFIX}ledger:{name}")
        pipe.lrange(f"{PREFIX}boots:{name}", 0, HISTORY - 1)
        out = await pipe.execute()
        instances = [
            InstanceView.from_hash(inst.id, name, out[2 * k], out[2 * k + 1]) for k, inst in enumerate(tier_cfg.instances)
        ]
        th, queued, ledger, boots = out[-4:]
        return TierView(
            name=name,
            instances=instances,
            failed_reason=th.get("failed_reason", ""),
            failed_at=int(th.get("failed_at") or 0),
            queued=queued,
            gpu_ms=int(ledger.get("gpu_ms") or 0),
            starts=int(ledger.get("starts") or 0),
            boots=[float(b) for b in boots],
        )

    async def set_failed(self, tier: str, reason: str) -> None:
        await self.redis.hset(f"{PREFIX}tier:{tier}", mapping={"failed_reason": reason, "failed_at": str(now_ms())})

    async def clear_failed(self, tier: str) -> None:
        await self.redis.hdel(f"{PREFIX}tier:{tier}", "failed_reason", "failed_at")

    # --- leases: what is in flight and what waits --------------------------------------

    def new_lease(self) -> str:
        return f"{self.gateway_id}:{uuid.uuid4().hex[:16]}"

    async def claim(self, inst_ids: list[str], lease: str, cap: int) -> tuple[str, str, bool, bool] | None:
        """Lease the best ready instance: (instance id, url, pool at capacity, tier was idle) or None."""
        now = now_ms()
        res = await self._claim(keys=inst_ids, args=[now, now + LEASE_TTL_MS, lease, cap])
        if not res:
            return None
        self._held[lease] = (f"{PREFIX}leases:{res[0]}", res[0])
        return res[0], res[1], bool(int(res[2])), int(res[3]) == 0

    async def release(self, lease: str, tier: str) -> None:
        """End a request: it stops counting as in flight, and the instance's idle clock restarts now."""
        held = self._held.pop(lease, None)
        if held is None:
            return
        key, inst_id = held
        now = str(now_ms())
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(key, lease)
        pipe.hset(f"{PREFIX}inst:{inst_id}", "last_active", now)
        pipe.hset(f"{PREFIX}tier:{tier}", "last_end", now)
        await pipe.execute()

    async def note_arrival(self, tier: str) -> None:
        """An arrival at an idle tier: record the gap it ends (adaptive policy) and when (predictive pre-warm)."""
        th = await self.redis.hget(f"{PREFIX}tier:{tier}", "last_end")
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(f"{PREFIX}arrivals:{tier}", f"{time.time():.0f}")
        pipe.ltrim(f"{PREFIX}arrivals:{tier}", 0, 4999)
        await pipe.execute()
        if th:
            gap = (now_ms() - int(th)) / 1000
            if gap > 1:
                await self.record_gap(tier, gap)

    async def enqueue(self, tier: str, lease: str) -> int:
        """Join a tier's wait queue; returns how many were queued before (for max_queue)."""
        key = f"{PREFIX}queue:{tier}"
        now = now_ms()
        pipe = self.redis.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zcard(key)
        pipe.zadd(key, {lease: now + LEASE_TTL_MS})
        _, before, _ = await pipe.execute()
        self._held[lease] = (key, "")
        return int(before)

    async def queue_position(self, tier: str, lease: str) -> int:
        """1-based place in the tier's queue (0 when not queued)."""
        rank = await self.redis.zrank(f"{PREFIX}queue:{tier}", lease)
        return 0 if rank is None else int(rank) + 1

    async def dequeue(self, tier: str, lease: str) -> None:
        self._held.pop(lease, None)
        await self.redis.zrem(f"{PREFIX}queue:{tier}", lease)

    async def heartbeat(self) -> None:
        """Keep this process's leases alive; a crashed process's leases expire on their own."""
        if not self._held:
            return
        expiry = now_ms() + LEASE_TTL_MS
        pipe = self.redis.pipeline(transaction=False)
        for lease, (key, _) in list(self._held.items()):
            pipe.zadd(key, {lease: expiry}, xx=True)
        await pipe.execute()

    async def begin_idle_stop(self, inst_id: str, idle_seconds: float) -> bool:
        res = await self._begin_idle_stop(
            keys=[f"{PREFIX}inst:{inst_id}", f"{PREFIX}leases:{inst_id}"], args=[now_ms(), int(idle_seconds * 1000)]
        )
        return bool(res)

    # --- the per-tier transition lock ------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, tier: str, *, wait: float = 0.0) -> AsyncIterator[bool]:
        """Yield True when this process owns tier `tier`; renewed while held, so a long boot keeps it."""
        key = f"{PREFIX}lock:{tier}"
        token = f"{self.gateway_id}:{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + wait
        got = bool(await self.redis.set(key, token, nx=True, px=LOCK_TTL_MS))
        while not got and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            got = bool(await self.redis.set(key, token, nx=True, px=LOCK_TTL_MS))
        if not got:
            yield False
            return
        renew = asyncio.create_task(self._keep_lock(key, token))
        try:
            yield True
        finally:
            renew.cancel()
            with contextlib.suppress(Exception):
                await self._unlock(keys=[key], args=[token])

    async def _keep_lock(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(LOCK_TTL_MS / 3000)
            with contextlib.suppress(Exception):
                await self._renew(keys=[key], args=[token, LOCK_TTL_MS])

    async def lock_holder(self, tier: str) -> str | None:
        return await self.redis.get(f"{PREFIX}lock:{tier}")

    # --- ledger, history, events -----------------------------------------------------------

    async def epoch(self) -> int:
        key = f"{PREFIX}epoch"
        await self.redis.set(key, str(now_ms()), nx=True)
        return int(await self.redis.get(key) or now_ms())

    async def count_start(self, tier: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(f"{PREFIX}ledger:{tier}", "starts", 1)
        pipe.hincrby(f"{PREFIX}day:{tier}:{day_of(now_ms())}", "starts", 1)
        await pipe.execute()

    async def close_billing(self, tier: str, inst_id: str, until: int | None = None) -> int:
        """Add an instance's open billing interval to the ledger (split by UTC day); returns its ms."""
        key = f"{PREFIX}inst:{inst_id}"
        since = int(await self.redis.hget(key, "billing_since") or 0)
        if not since:
            return 0
        end = until or now_ms()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, "billing_since", "")
        pipe.hincrby(f"{PREFIX}ledger:{tier}", "gpu_ms", max(0, end - since))
        for day, ms in _split_by_day(since, end):
            pipe.hincrby(f"{PREFIX}day:{tier}:{day}", "gpu_ms", ms)
        await pipe.execute()
        return max(0, end - since)

    async def record_boot(self, tier: str, seconds: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(f"{PREFIX}boots:{tier}", f"{seconds:.3f}")
        pipe.ltrim(f"{PREFIX}boots:{tier}", 0, HISTORY - 1)
        await pipe.execute()

    async def record_gap(self, tier: str, seconds: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(f"{PREFIX}gaps:{tier}", f"{seconds:.3f}")
        pipe.ltrim(f"{PREFIX}gaps:{tier}", 0, 499)
        await pipe.execute()

    async def gaps(self, tier: str) -> list[float]:
        return [float(g) for g in await self.redis.lrange(f"{PREFIX}gaps:{tier}", 0, 499)]

    async def arrivals(self, tier: str) -> list[float]:
        """Epoch seconds of recent arrivals at an idle tier, oldest first."""
        return sorted(float(a) for a in await self.redis.lrange(f"{PREFIX}arrivals:{tier}", 0, 4999))

    async def count_day(self, tier: str, field_name: str, n: int = 1) -> None:
        await self.redis.hincrby(f"{PREFIX}day:{tier}:{day_of(now_ms())}", field_name, n)

    async def days(self, tier: str, dates: Iterable[str]) -> dict[str, dict[str, int]]:
        pipe = self.redis.pipeline(transaction=False)
        dates = list(dates)
        for d in dates:
            pipe.hgetall(f"{PREFIX}day:{tier}:{d}")
        out = await pipe.execute()
        return {d: {k: int(v) for k, v in h.items()} for d, h in zip(dates, out, strict=True)}

    async def event(self, tier: str, event: str, *, instance: str = "", reason: str = "", actor: str = "") -> None:
        entry = {
            "ts": str(now_ms()),
            "tier": tier,
            "instance": instance,
            "event": event,
            "reason": reason,
            "actor": actor or f"gateway {self.gateway_id}",
        }
        await self.redis.xadd(f"{PREFIX}events", entry, maxlen=10_000, approximate=True)
        await self.publish(tier, event)

    async def events(self, count: int = 100) -> list[dict[str, str]]:
        rows = await self.redis.xrevrange(f"{PREFIX}events", count=count)
        return [fields for _, fields in rows]

    async def publish(self, tier: str, what: str) -> None:
        await self.redis.publish(f"{PREFIX}ch:{tier}", json.dumps({"what": what, "gw": self.gateway_id}))


def _split_by_day(start: int, end: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    day_ms = 86_400_000
    while start < end:
        boundary = (start // day_ms + 1) * day_ms
        stop = min(end, boundary)
        out.append((day_of(start), stop - start))
        start = stop
    return out


class Notifier:
    """One pub/sub connection per process that wakes local waiters when a tier changes.

    Waiting for a boot is event-driven: a request awaits `changed(tier)`, and the only
    fallback re-read is a slow safety tick, not a per-request poll.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._events: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.psubscribe(f"{PREFIX}ch:*")
                async for msg in pubsub.listen():
                    if msg.get("type") == "pmessage":
                        self._fire(msg["channel"].removeprefix(f"{PREFIX}ch:"))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reconnect; waiters still have their safety tick
                await asyncio.sleep(0.5)

    def _fire(self, tier: str) -> None:
        ev = self._events.pop(tier, None)
        if ev is not None:
            ev.set()

    def waiter(self, tier: str) -> asyncio.Event:
        """Take the event *before* re-reading state, so a change in between is not missed."""
        ev = self._events.get(tier)
        if ev is None:
            ev = self._events[tier] = asyncio.Event()
        return ev

    async def aclose(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
