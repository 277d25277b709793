"""Money and history in Redis: billed GPU time, starts, per-day counters, and what the idle
policy and the simulator learn from (boots, idle gaps, arrivals, askers, the request trace).

Spend has one definition, `spend`, used by the daily budget, the status table and the
dashboard alike: closed billing intervals are split by UTC day when they close, and an
instance still billing counts only from the start of the day (or its start, if later).
Time in standby (a cheaper stop, where the provider has one) is billed at its own price.

Keys (prefix `tg:`):
  ledger:{t}        hash  gpu_ms, standby_ms, starts (all time)
  day:{t}:{date}    hash  gpu_ms, standby_ms, starts, requests, cache_hits, cache_misses (per UTC day)
  boots:{t}         list  recent cold-start seconds, newest first
  gaps:{t}          list  "END:SECONDS" of recent idle gaps (END = epoch s the gap ended), newest first
  arrivals:{t}      list  epoch s of arrivals at an idle tier (predictive pre-warm)
  tier:{t}          hash  last_end (ms): when the tier's last request ended
  askers:{t}        zset  asker id -> when their last answer ended (ms)
  present           zset  asker id -> until when their page is known to be open (ms); kept after it
                          lapses, so a page that vanished without saying so counts as closed then
  closed            zset  asker id -> when their page closed (ms)
  visits:{t}        list  epoch s of first requests of askers not seen for VISIT_GAP_S (forecasts)
  cold_waits:{t}    list  seconds the first request after each cold start waited, newest first
  trace             stream  every request: t, tier, task, mode, session, duration_s, tokens, cache
  epoch             str   when this Redis first saw a gateway (ms): the always-on baseline's start
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

from .config import TierConfig
from .decide import Asker as DecideAsker
from .decide import History
from .state import PREFIX, InstanceView, inst_key, now_ms

DAY_MS = 86_400_000
HISTORY = 50
MAX_GAPS = 500
MAX_ARRIVALS = 5000
TRACE_LENGTH = 100_000
GAP_MIN_S = 1.0  # shorter pauses are one burst, not an idle gap
ASKERS_KEPT_S = 4 * 3600  # askers older than this say nothing about the next minutes
VISIT_GAP_S = 1800  # an asker back after this long is a new visit
MAX_VISITS = 20_000  # about four weeks of a busy tier
MAX_COLD_WAITS = 20
LEARNT_TTL = 10.0  # seconds decide's history lists are reused before they are read again
PRESENCE_TTL_MS = 15_000  # a page that stopped reporting for this long is gone


@functools.lru_cache(maxsize=64)
def _day(index: int) -> str:
    return datetime.fromtimestamp(index * 86_400, UTC).strftime("%Y-%m-%d")


def day_of(ms: int) -> str:
    """The UTC date of a time in ms (formatted once per day, not on every request)."""
    return _day(ms // 86_400_000)


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
    """Ms billed on the day starting at `day_start`: its closed intervals plus the open ones clipped to it.

    The same for GPU time (`billing_since`) and standby time (`standby_since`).
    """
    day_end = day_start + DAY_MS
    open_ms = sum(max(0, min(now, day_end) - max(since, day_start)) for since in billing_since if since)
    return closed_ms + open_ms


def spend(tier: TierConfig, day: dict[str, int], instances: Iterable[InstanceView], start: int, now: int) -> float:
    """What the tier cost on the day starting at `start` (its counters `day`), up to `now`."""
    insts = list(instances)
    gpu = day_gpu_ms(day.get("gpu_ms", 0), (i.billing_since for i in insts), start, now)
    standby = day_gpu_ms(day.get("standby_ms", 0), (i.standby_since for i in insts), start, now)
    return (gpu * tier.price_per_hour + standby * tier.standby_price_per_hour) / 3_600_000


@dataclass(frozen=True)
class Asker:
    id: str
    last_seen: float  # epoch s their last answer ended
    present: bool  # their page is open now
    closed: float = 0.0  # epoch s their page closed; 0 while open, or for API callers (unknown)


# One arrival at an idle tier: its time, the gap it ends (ARGV[2] >= 0, or -1: from the tier's
# last request end, kept in Redis), the lists trimmed. KEYS: arrivals, gaps, tier hash.
_ARRIVAL = f"""
local t = tonumber(ARGV[1]); local gap = tonumber(ARGV[2]); local gap_min = tonumber(ARGV[3])
redis.call('LPUSH', KEYS[1], tostring(math.floor(t / 1000)))
redis.call('LTRIM', KEYS[1], 0, {MAX_ARRIVALS - 1})
if gap < 0 then
  local last = tonumber(redis.call('HGET', KEYS[3], 'last_end') or '0') or 0
  if last > 0 then gap = (t - last) / 1000 end
end
if gap > gap_min then
  redis.call('LPUSH', KEYS[2], string.format('%d:%.3f', math.floor(t / 1000), gap))
  redis.call('LTRIM', KEYS[2], 0, {MAX_GAPS - 1})
end
return 0
"""

# A request of an asker this process had not seen lately: a new visit if nobody saw them for
# VISIT_GAP_S (every gateway writes to the same zset). KEYS: askers zset, visits. ARGV: asker, t ms, gap ms.
_VISIT = f"""
local seen = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0') or 0
local t = tonumber(ARGV[2])
if t - seen > tonumber(ARGV[3]) then
  redis.call('LPUSH', KEYS[2], tostring(math.floor(t / 1000)))
  redis.call('LTRIM', KEYS[2], 0, {MAX_VISITS - 1})
end
if t > seen then redis.call('ZADD', KEYS[1], t, ARGV[1]) end
return 0
"""


class Ledger:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._arrival = redis.register_script(_ARRIVAL)
        self._visit = redis.register_script(_VISIT)
        # Answered requests are counted in memory and written once a second (`flush`): the
        # answer path does no Redis round trip for bookkeeping (measured: a third of a hit's CPU).
        self._counts: dict[tuple[str, str], int] = {}
        self._askers: dict[tuple[str, str], int] = {}
        self._trace: list[dict[str, str]] = []
        self._arrivals: list[tuple[str, int, float]] = []  # (tier, ms, gap s or -1)
        self._visits: list[tuple[str, str, int]] = []  # (tier, asker or '', ms): maybe a new visit
        self._cold_waits: list[tuple[str, float]] = []
        self._seen: dict[tuple[str, str], int] = {}  # this process's askers: most requests are no new visit
        self._learnt: dict[str, tuple[float, tuple]] = {}  # tier -> (monotonic, lists decide reads)

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
        return await self._close(tier, inst_id, "billing_since", "gpu_ms", until)

    async def close_standby(self, tier: str, inst_id: str, until: int | None = None) -> int:
        """End an instance's standby (a cheaper stop that still bills): its ms go to `standby_ms`."""
        return await self._close(tier, inst_id, "standby_since", "standby_ms", until)

    async def _close(self, tier: str, inst_id: str, since_field: str, total: str, until: int | None) -> int:
        key = inst_key(inst_id)
        since = int(await self.redis.hget(key, since_field) or 0)
        if not since:
            return 0
        end = until or now_ms()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, since_field, "")
        pipe.hincrby(f"{PREFIX}ledger:{tier}", total, max(0, end - since))
        for day, ms in split_by_day(since, end):
            pipe.hincrby(f"{PREFIX}day:{tier}:{day}", total, ms)
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

    async def history(self, tier: str) -> tuple[list[tuple[float, float]], list[float], list[float]]:
        """(gaps as (end, seconds) newest first, boots newest first, arrivals ascending)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(f"{PREFIX}gaps:{tier}", 0, MAX_GAPS - 1)
        pipe.lrange(f"{PREFIX}boots:{tier}", 0, HISTORY - 1)
        pipe.lrange(f"{PREFIX}arrivals:{tier}", 0, MAX_ARRIVALS - 1)
        gaps, boots, arrivals = await pipe.execute()
        return [_gap(g) for g in gaps], [float(b) for b in boots], sorted(float(a) for a in arrivals)

    def arrival(self, tier: str, asker: str, gap: float | None) -> None:
        """A request arrived; `gap`: it ends an idle gap of that many seconds (-1: the length is in Redis),
        None: the tier was busy or it is the same burst. Written with the next flush."""
        now = now_ms()
        if gap is not None:
            self._arrivals.append((tier, now, gap))
        if asker:
            seen = self._seen.get((tier, asker), 0)
            if now - seen > VISIT_GAP_S * 1000:
                self._visits.append((tier, asker, now))
            self._seen[(tier, asker)] = now
            if len(self._seen) > 100_000:
                self._seen.clear()  # forgetting costs only a check in Redis
        elif gap is not None:
            self._visits.append((tier, "", now))  # unknown caller at an idle tier: counted as a visit

    def cold_wait(self, tier: str, seconds: float) -> None:
        """How long the first request after a cold start waited (shorter than the boot when warmed on intent)."""
        self._cold_waits.append((tier, seconds))

    async def learnt(self, tier: str) -> History:
        """Everything `decide` reads about the tier's past. The lists change only with arrivals and boots,
        so they are re-read every LEARNT_TTL seconds (and after this process wrote some); askers each time."""
        cached = self._learnt.get(tier)
        if cached is None or time.monotonic() - cached[0] > LEARNT_TTL:
            (gaps, boots, arrivals), (visits, waits) = await self.history(tier), await self.demand(tier)
            cached = self._learnt[tier] = (time.monotonic(), (gaps, boots, arrivals, visits, waits))
        gaps, boots, arrivals, visits, waits = cached[1]
        askers = await self.askers(tier)
        return History(gaps=gaps, boots=boots, arrivals=arrivals, visits=visits, cold_waits=waits,
                       askers=tuple(DecideAsker(a.last_seen, a.present, a.closed) for a in askers))

    async def demand(self, tier: str) -> tuple[list[float], list[float]]:
        """(visits ascending, cold waits newest first): what the idle policy prices a restart with."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lrange(f"{PREFIX}visits:{tier}", 0, MAX_VISITS - 1)
        pipe.lrange(f"{PREFIX}cold_waits:{tier}", 0, MAX_COLD_WAITS - 1)
        visits, waits = await pipe.execute()
        return sorted(float(v) for v in visits), [float(w) for w in waits]

    async def present(self, askers: Iterable[str]) -> None:
        """These pages are open now (the UI reports its open sessions every few seconds)."""
        until = now_ms() + PRESENCE_TTL_MS
        mapping = {a: until for a in askers if a}
        if mapping:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(f"{PREFIX}present", mapping)
            pipe.zrem(f"{PREFIX}closed", *mapping)
            await pipe.execute()

    async def gone(self, asker: str) -> None:
        """A page closed (the UI saw it unload)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(f"{PREFIX}present", asker)
        pipe.zadd(f"{PREFIX}closed", {asker: now_ms()})
        await pipe.execute()

    async def askers(self, tier: str) -> list[Asker]:
        """Recent askers of the tier: page open, page closed (and when), or unknown (API callers)."""
        now = now_ms()
        key = f"{PREFIX}askers:{tier}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", now - ASKERS_KEPT_S * 1000)
        pipe.zrange(key, 0, -1, withscores=True)
        _, rows = await pipe.execute()
        if not rows:
            return []
        ids = [a for a, _ in rows]
        pipe = self.redis.pipeline(transaction=False)
        pipe.zmscore(f"{PREFIX}present", ids)
        pipe.zmscore(f"{PREFIX}closed", ids)
        present, closed = await pipe.execute()
        out = []
        for (a, seen), until, shut in zip(rows, present, closed, strict=True):
            if until is not None and until > now:
                out.append(Asker(a, seen / 1000, True))
            elif shut is not None or until is not None:  # said goodbye, or stopped reporting
                out.append(Asker(a, seen / 1000, False, (shut or until) / 1000))
            else:
                out.append(Asker(a, seen / 1000, False))
        return out

    # --- the trace the simulator replays -------------------------------------------------------

    def account(self, tier: str, cache: str, asker: str, trace: dict[str, object] | None) -> None:
        """One answered request: the day's counters, its asker, its trace row; written with the next flush."""
        now = now_ms()
        day = f"{PREFIX}day:{tier}:{day_of(now)}"
        self._counts[(day, "requests")] = self._counts.get((day, "requests"), 0) + 1
        if counter := {"hit": "cache_hits", "miss": "cache_misses"}.get(cache):
            self._counts[(day, counter)] = self._counts.get((day, counter), 0) + 1
        if asker and cache != "hit":
            self._askers[(tier, asker)] = now
        if trace is not None:
            self._trace.append({k: str(v) for k, v in trace.items()})

    async def flush(self) -> None:
        """Write what `account`, `arrival` and `cold_wait` gathered, in one round trip (every second)."""
        if self._arrivals or self._visits or self._cold_waits:
            await self._flush_history()
        if not (self._counts or self._askers or self._trace):
            return
        counts, askers, trace = self._counts, self._askers, self._trace
        self._counts, self._askers, self._trace = {}, {}, []
        pipe = self.redis.pipeline(transaction=False)
        for (key, name), n in counts.items():
            pipe.hincrby(key, name, n)
        for (tier, asker), at in askers.items():
            pipe.zadd(f"{PREFIX}askers:{tier}", {asker: at})
        for row in trace:
            pipe.xadd(f"{PREFIX}trace", row, maxlen=TRACE_LENGTH, approximate=True)
        try:
            await pipe.execute()
        except Exception:  # Redis away: keep it for the next flush (the trace bounded), then say so
            for k, n in counts.items():
                self._counts[k] = self._counts.get(k, 0) + n
            self._askers = askers | self._askers
            self._trace = (trace + self._trace)[-TRACE_LENGTH:]
            raise

    async def _flush_history(self) -> None:
        arrivals, visits, waits = self._arrivals, self._visits, self._cold_waits
        self._arrivals, self._visits, self._cold_waits = [], [], []
        pipe = self.redis.pipeline(transaction=False)
        for tier, t, gap in arrivals:
            keys = [f"{PREFIX}arrivals:{tier}", f"{PREFIX}gaps:{tier}", f"{PREFIX}tier:{tier}"]
            await self._arrival(keys=keys, args=[t, gap, GAP_MIN_S], client=pipe)
        for tier, asker, t in visits:
            if asker:
                await self._visit(keys=[f"{PREFIX}askers:{tier}", f"{PREFIX}visits:{tier}"],
                                  args=[asker, t, VISIT_GAP_S * 1000], client=pipe)
            else:
                pipe.lpush(f"{PREFIX}visits:{tier}", str(t // 1000))
                pipe.ltrim(f"{PREFIX}visits:{tier}", 0, MAX_VISITS - 1)
        for tier, seconds in waits:
            pipe.lpush(f"{PREFIX}cold_waits:{tier}", f"{seconds:.3f}")
            pipe.ltrim(f"{PREFIX}cold_waits:{tier}", 0, MAX_COLD_WAITS - 1)
        for tier in {a[0] for a in arrivals} | {v[0] for v in visits} | {w[0] for w in waits}:
            self._learnt.pop(tier, None)  # this process just changed what decide reads
        try:
            await pipe.execute()
        except Exception:  # Redis away: the next flush tries again
            self._arrivals, self._visits, self._cold_waits = arrivals + self._arrivals, visits + self._visits, \
                waits + self._cold_waits
            raise

    async def trace(self, **fields: object) -> None:
        await self.redis.xadd(f"{PREFIX}trace", {k: str(v) for k, v in fields.items()},
                              maxlen=TRACE_LENGTH, approximate=True)


def _gap(raw: str) -> tuple[float, float]:
    end, _, seconds = raw.partition(":")
    return (float(end), float(seconds)) if seconds else (0.0, float(end))
