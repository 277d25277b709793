"""Money and history in Redis: billed GPU time, starts, per-day counters, and what the idle
policy and the simulator learn from (boots, idle gaps, arrivals, askers, the request trace).

Spend has one definition, `day_gpu_ms`, used by the daily budget, the status table and the
dashboard alike: closed billing intervals are split by UTC day when they close, and an
instance still billing counts only from the start of the day (or its start, if later).

Keys (prefix `tg:`):
  ledger:{t}        hash  gpu_ms, starts (all time)
  day:{t}:{date}    hash  gpu_ms, starts, requests, cache_hits, cache_misses (per UTC day)
  boots:{t}         list  recent cold-start seconds, newest first
  gaps:{t}          list  "END:SECONDS" of recent idle gaps (END = epoch s the gap ended), newest first
  arrivals:{t}      list  epoch s of arrivals at an idle tier (predictive pre-warm)
  tier:{t}          hash  last_end (ms): when the tier's last request ended
  askers:{t}        zset  asker id -> when their last answer ended (ms)
  present           zset  asker id -> until when their page is known to be open (ms)
  trace             stream  every request: t, tier, task, mode, session, duration_s, tokens, cache
  epoch             str   when this Redis first saw a gateway (ms): the always-on baseline's start
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

from .state import PREFIX, inst_key, now_ms

DAY_MS = 86_400_000
HISTORY = 50
MAX_GAPS = 500
MAX_ARRIVALS = 5000
TRACE_LENGTH = 100_000
GAP_MIN_S = 1.0  # shorter pauses are one burst, not an idle gap
ASKERS_KEPT_S = 4 * 3600  # askers older than this say nothing about the next minutes
PRESENCE_TTL_MS = 15_000  # a page that stopped reporting for this long is gone


def day_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def day_start_ms(ms: int) -> int:
    return ms - ms % DAY_MS


def split_by_day(start: int, end: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    while start < end:
        stop = min(end, day_start_ms(start) + DAY_MS)
        out.append((day_of(start), stop - start))
        start = stop
    return out


def day_gpu_ms(closed_ms: int, billing_since: Iterable[int], day_start: int, now: int) -> int:
    """GPU ms billed on the day starting at `day_start`: its closed intervals plus the open ones clipped to it."""
    day_end = day_start + DAY_MS
    open_ms = sum(max(0, min(now, day_end) - max(since, day_start)) for since in billing_since if since)
    return closed_ms + open_ms


@dataclass(frozen=True)
class Asker:
    id: str
    last_seen: float  # epoch s their last answer ended
    present: bool  # their page is open now


class Ledger:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def epoch(self) -> int:
        key = f"{PREFIX}epoch"
        await self.redis.set(key, str(now_ms()), nx=True)
        return int(await self.redis.get(key) or now_ms())

    # --- billing ----------------------------------------------------------------------------

    async def count_start(self, tier: str) -> None:
        """Called once the provider accepted a start: a refused start is not a start."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(f"{PREFIX}ledger:{tier}", "starts", 1)
        pipe.hincrby(f"{PREFIX}day:{tier}:{day_of(now_ms())}", "starts", 1)
        await pipe.execute()

    async def close_billing(self, tier: str, inst_id: str, until: int | None = None) -> int:
        """Add an instance's open billing interval to the ledger (split by UTC day); returns its ms."""
        key = inst_key(inst_id)
        since = int(await self.redis.hget(key, "billing_since") or 0)
        if not since:
            return 0
        end = until or now_ms()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, "billing_since", "")
        pipe.hincrby(f"{PREFIX}ledger:{tier}", "gpu_ms", max(0, end - since))
        for day, ms in split_by_day(since, end):
            pipe.hincrby(f"{PREFIX}day:{tier}:{day}", "gpu_ms", ms)
        await pipe.execute()
        return max(0, end - since)

    async def count_day(self, tier: str, field_name: str, n: int = 1) -> None:
        await self.redis.hincrby(f"{PREFIX}day:{tier}:{day_of(now_ms())}", field_name, n)

    async def days(self, tier: str, dates: Sequence[str]) -> dict[str, dict[str, int]]:
        pipe = self.redis.pipeline(transaction=False)
        for d in dates:
            pipe.hgetall(f"{PREFIX}day:{tier}:{d}")
        out = await pipe.execute()
        return {d: {k: int(v) for k, v in h.items()} for d, h in zip(dates, out, strict=True)}

    # --- what the idle policy learns from ------------------------------------------------------

    async def record_boot(self, tier: str, seconds: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(f"{PREFIX}boots:{tier}", f"{seconds:.3f}")
        pipe.ltrim(f"{PREFIX}boots:{tier}", 0, HISTORY - 1)
        await pipe.execute()

    async def note_arrival(self, tier: str) -> None:
        """An arrival at an idle tier: the gap it ends (adaptive policy) and when (forecasts)."""
        now = now_ms()
        last_end = await self.redis.hget(f"{PREFIX}tier:{tier}", "last_end")
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(f"{PREFIX}arrivals:{tier}", f"{now / 1000:.0f}")
        pipe.ltrim(f"{PREFIX}arrivals:{tier}", 0, MAX_ARRIVALS - 1)
        if last_end and (gap := (now - int(last_end)) / 1000) > GAP_MIN_S:
            pipe.lpush(f"{PREFIX}gaps:{tier}", f"{now / 1000:.0f}:{gap:.3f}")
            pipe.ltrim(f"{PREFIX}gaps:{tier}", 0, MAX_GAPS - 1)
        await pipe.execute()

    async def history(self, tier: str) -> tuple[list[tuple[float, float]], list[float], list[float]]:
        """(gaps as (end, seconds) newest first, boots newest first, arrivals ascending)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(f"{PREFIX}gaps:{tier}", 0, MAX_GAPS - 1)
        pipe.lrange(f"{PREFIX}boots:{tier}", 0, HISTORY - 1)
        pipe.lrange(f"{PREFIX}arrivals:{tier}", 0, MAX_ARRIVALS - 1)
        gaps, boots, arrivals = await pipe.execute()
        return [_gap(g) for g in gaps], [float(b) for b in boots], sorted(float(a) for a in arrivals)

    async def seen(self, tier: str, asker: str) -> None:
        """An asker's answer ended: they may be back soon while their page is open."""
        if asker:
            await self.redis.zadd(f"{PREFIX}askers:{tier}", {asker: now_ms()})

    async def present(self, askers: Iterable[str]) -> None:
        """These pages are open now (the UI reports its open sessions every few seconds)."""
        until = now_ms() + PRESENCE_TTL_MS
        mapping = {a: until for a in askers if a}
        if mapping:
            await self.redis.zadd(f"{PREFIX}present", mapping)

    async def gone(self, asker: str) -> None:
        await self.redis.zrem(f"{PREFIX}present", asker)

    async def askers(self, tier: str) -> list[Asker]:
        now = now_ms()
        key = f"{PREFIX}askers:{tier}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now - ASKERS_KEPT_S * 1000)
        pipe.zrange(key, 0, -1, withscores=True)
        _, rows = await pipe.execute()
        if not rows:
            return []
        present = await self.redis.zmscore(f"{PREFIX}present", [a for a, _ in rows])
        return [
            Asker(a, seen / 1000, p is not None and p > now) for (a, seen), p in zip(rows, present, strict=True)
        ]

    # --- the trace the simulator replays -------------------------------------------------------

    async def trace(self, **fields: object) -> None:
        await self.redis.xadd(f"{PREFIX}trace", {k: str(v) for k, v in fields.items()},
                              maxlen=TRACE_LENGTH, approximate=True)


def _gap(raw: str) -> tuple[float, float]:
    end, _, seconds = raw.partition(":")
    return (float(end), float(seconds)) if seconds else (0.0, float(end))
