"""Leases: which requests an instance is serving, and which wait for a tier.

A request leases a ready instance atomically with the check that it is ready (a Lua
script), so an idle stop, whose compare-and-swap checks for live leases, either sees the
lease and keeps the machine, or ran first and the request sees `stopping` and waits.

A lease is a sorted-set member scored by its expiry, refreshed by the process holding it.
A process that dies stops refreshing and its leases lapse on their own. A lease whose
answer sits unread (the consumer went away without closing the stream: a closed browser
tab whose handler was never resumed) stops being refreshed after `STALL_SECONDS`, so a
forgotten answer cannot hold a machine up for ever.

Keys (prefix `tg:`): leases:{instance} zset, queue:{tier} zset, tier:{t} hash (last_end ms).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from .state import PREFIX, leases_key, now_ms, queue_key

log = logging.getLogger("tiergate.leases")

LEASE_TTL_MS = 15_000  # a crashed gateway's leases stop counting after this
STALL_SECONDS = 30.0  # an answer nobody reads for this long no longer holds its machine up
RELEASE_BATCH = 0.005  # seconds ended requests gather before their releases are written in one round trip

# Lease a ready instance, packing onto the first with room so extras idle out first.
# KEYS: the tier's instance ids. Returns {instance, url, pool full (0/1), leases before, last activity ms}.
_CLAIM = f"""
local now = tonumber(ARGV[1]); local expiry = tonumber(ARGV[2]); local lease = ARGV[3]
local cap = tonumber(ARGV[4]); local total = 0; local best = nil; local best_n = nil; local first_room = nil
local last = 0
for i, id in ipairs(KEYS) do
  local seen = tonumber(redis.call('HGET', '{PREFIX}inst:' .. id, 'last_active') or '0') or 0
  if seen > last then last = seen end
  if redis.call('HGET', '{PREFIX}inst:' .. id, 'state') == 'ready' then
    redis.call('ZREMRANGEBYSCORE', '{PREFIX}leases:' .. id, '-inf', now)
    local n = redis.call('ZCARD', '{PREFIX}leases:' .. id)
    total = total + n
    if first_room == nil and (cap == 0 or n < cap) then first_room = id end
    if best == nil or n < best_n then best = id; best_n = n end
  end
end
local pick = first_room or best
if pick == nil then return nil end
redis.call('ZADD', '{PREFIX}leases:' .. pick, expiry, lease)
local full = 0
if first_room == nil then full = 1 end
return {{pick, redis.call('HGET', '{PREFIX}inst:' .. pick, 'url'), full, total, last}}
"""


@dataclass
class Claim:
    instance: str
    url: str
    pool_full: bool  # every ready instance is at max_inflight_per_instance
    was_idle: bool  # nothing was in flight on the tier before this request
    idle_ms: int = 0  # since the tier's last request ended (or it became ready), when it was idle


@dataclass
class _Held:
    key: str  # the sorted set holding it
    tier: str
    instance: str = ""  # "" for a place in a queue
    unread_since: float | None = None  # monotonic: an answer handed to a consumer that has not asked for more


class Leases:
    def __init__(self, redis: aioredis.Redis, gateway_id: str) -> None:
        self.redis = redis
        self.gateway_id = gateway_id
        self._claim = redis.register_script(_CLAIM)
        self._held: dict[str, _Held] = {}
        self._ended: list[tuple[_Held, str, int]] = []
        self._writing: asyncio.Task | None = None

    def new_id(self) -> str:
        return f"{self.gateway_id}:{uuid.uuid4().hex[:16]}"

    # --- serving ---------------------------------------------------------------------------

    async def claim(self, tier: str, inst_ids: list[str], lease: str, cap: int) -> Claim | None:
        now = now_ms()
        res = await self._claim(keys=inst_ids, args=[now, now + LEASE_TTL_MS, lease, cap])
        if not res:
            return None
        self._held[lease] = _Held(leases_key(res[0]), tier, res[0])
        idle = int(res[3]) == 0
        return Claim(res[0], res[1] or "", bool(int(res[2])), idle, max(0, now - int(res[4])) if idle else 0)

    async def release(self, lease: str) -> None:
        """End a request: it stops counting as in flight, and the instance's idle clock restarts now.

        Releases are written together a few milliseconds later (one round trip for all that ended
        meanwhile, `RELEASE_BATCH`): the lease leaves the heartbeat at once, and the end time
        written is the real one, so an idle stop waits exactly as long as it should.
        """
        held = self._held.pop(lease, None)
        if held is None:
            return
        self._ended.append((held, lease, now_ms()))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.get_running_loop().create_task(self._write_releases())
        await asyncio.shield(self._writing)

    async def _write_releases(self) -> None:
        await asyncio.sleep(RELEASE_BATCH)
        while self._ended:
            ended, self._ended = self._ended, []
            pipe = self.redis.pipeline(transaction=False)
            for held, lease, at in ended:
                pipe.zrem(held.key, lease)
                pipe.hset(f"{PREFIX}inst:{held.instance}", "last_active", str(at))
                pipe.hset(f"{PREFIX}tier:{held.tier}", "last_end", str(at))
            try:
                await pipe.execute()
            except Exception:  # Redis away: the leases lapse on their own (LEASE_TTL_MS), nothing stays pinned
                log.warning("could not write %d released lease(s); they lapse in %ds", len(ended), LEASE_TTL_MS // 1000)
                raise

    def unread(self, lease: str) -> None:
        """The answer's next bytes wait for a consumer (see STALL_SECONDS)."""
        held = self._held.get(lease)
        if held is not None and held.unread_since is None:
            held.unread_since = time.monotonic()

    def read(self, lease: str) -> None:
        """The consumer asked for more: the lease is alive again."""
        held = self._held.get(lease)
        if held is not None:
            held.unread_since = None

    # --- waiting ---------------------------------------------------------------------------

    async def enqueue(self, tier: str, qid: str) -> int:
        """Join a tier's wait queue; returns how many were queued before (for max_queue)."""
        key = queue_key(tier)
        now = now_ms()
        pipe = self.redis.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zcard(key)
        pipe.zadd(key, {qid: now + LEASE_TTL_MS})
        _, before, _ = await pipe.execute()
        self._held[qid] = _Held(key, tier)
        return int(before)

    async def dequeue(self, tier: str, qid: str) -> int:
        """Leave the queue; returns how many still wait (in every gateway)."""
        self._held.pop(qid, None)
        key = queue_key(tier)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(key, qid)
        pipe.zcount(key, now_ms(), "+inf")
        _, left = await pipe.execute()
        return int(left)

    async def position(self, tier: str, qid: str) -> int:
        """1-based place in the tier's queue (0 when not queued)."""
        rank = await self.redis.zrank(queue_key(tier), qid)
        return 0 if rank is None else int(rank) + 1

    async def waiting(self, tier: str) -> int:
        return int(await self.redis.zcount(queue_key(tier), now_ms(), "+inf"))

    # --- keeping them alive --------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Keep this process's live leases alive; stalled ones (and a crashed process's) lapse."""
        if not self._held:
            return
        expiry = now_ms() + LEASE_TTL_MS
        stalled_before = time.monotonic() - STALL_SECONDS
        pipe = self.redis.pipeline(transaction=False)
        for lease, held in list(self._held.items()):
            if held.unread_since is not None and held.unread_since < stalled_before:
                continue
            pipe.zadd(held.key, {lease: expiry}, xx=True)
        await pipe.execute()
