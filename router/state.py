"""The instances' shared state in Redis: what every gateway process must agree on.

Several gateway processes may share one Redis, so nothing that decides money lives in a
Python variable. An instance's state changes only through `transition`, a compare-and-swap
in Lua that also refuses any change the table in `machine.py` does not allow, so a process
acting on a stale read changes nothing. The per-tier owner lock decides who may start,
watch and stop a tier's machines; losing it (a renewal that fails) cancels the owner's work.

Keys (prefix `tg:`):
  inst:{id}       hash  state, tier, url, stage, reason, started_by, boot_started, billing_since,
                        last_active, ready_at, ready_cb, changed_at, handle (the provider's JSON record),
                        cancel (why a boot should be given up), then (where a stop lands: stopped|failed),
                        standby_since (in the provider's cheaper stop since)
  lock:{t}        str   owner token of the one process allowed to change tier t
  events          stream  lifecycle events (who started or stopped what, when, why)
  ch:{t}          pub/sub channel announcing every change of tier t
Leases and queues are in `leases.py`; money and history in `ledger.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from .machine import TRANSITIONS, InstanceState, tier_state

log = logging.getLogger("tiergate.state")

PREFIX = "tg:"
LOCK_TTL_MS = 10_000  # a crashed owner's lock frees after this
LOCK_RENEW_EVERY = LOCK_TTL_MS / 3000  # seconds


def now_ms() -> int:
    return int(time.time() * 1000)


def inst_key(inst_id: str) -> str:
    return f"{PREFIX}inst:{inst_id}"


def leases_key(inst_id: str) -> str:
    return f"{PREFIX}leases:{inst_id}"


def queue_key(tier: str) -> str:
    return f"{PREFIX}queue:{tier}"


def _lua_table() -> str:
    """machine.TRANSITIONS as a Lua set of "from>to" strings: one table, used by Python and Redis alike."""
    pairs = [f'["{src}>{dst}"]=true' for src, targets in TRANSITIONS.items() for dst in targets]
    return "{" + ",".join(pairs) + "}"


# Compare-and-swap of an instance's state. ARGV: expected states ("a,b"), new state, now ms,
# idle guard ms (-1: none), tier (for the channel), then field/value pairs to set with it.
# The idle guard is the atomic re-check of an idle stop: the instance serves nobody (no live
# lease) and has been idle at least that long. Returns {1, old} on success, {0, current} when
# the state was not one expected (or the guard held), {-1, current} for a forbidden transition.
_TRANSITION = f"""
local allowed = {_lua_table()}
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur or cur == '' then cur = 'stopped' end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return {{0, cur}} end
if not allowed[cur .. '>' .. ARGV[2]] then return {{-1, cur}} end
local now = tonumber(ARGV[3]); local idle = tonumber(ARGV[4])
if idle >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) > 0 then return {{0, cur}} end
  local last = tonumber(redis.call('HGET', KEYS[1], 'last_active') or '0') or 0
  if now - last < idle then return {{0, cur}} end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'changed_at', ARGV[3])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PUBLISH', '{PREFIX}ch:' .. ARGV[5], ARGV[2])
return {{1, cur}}
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class ForbiddenTransition(RuntimeError):
    """A transition the state machine does not allow: a bug, never a race."""


class LockLost(Exception):
    """The owner lock expired or was taken while its work ran; the work was cancelled."""


@dataclass
class InstanceView:
    id: str
    tier: str
    state: InstanceState = InstanceState.STOPPED
    url: str = ""
    stage: str = ""
    reason: str = ""
    started_by: str = ""  # request | admin | prewarm | intent | scale | adopted
    boot_started: int = 0
    billing_since: int = 0
    last_active: int = 0
    ready_at: int = 0
    ready_cb: int = 0
    changed_at: int = 0
    handle: dict = field(default_factory=dict)
    standby_since: int = 0  # stopped in the provider's standby (ms); billed at the standby price
    cancel: str = ""  # why a boot in progress should be given up (an admin stop, a removed tier)
    then: str = ""  # while stopping: the state to land in (failed after a failed boot)
    inflight: int = 0

    @classmethod
    def from_hash(cls, inst_id: str, tier: str, h: dict[str, str], inflight: int) -> InstanceView:
        def i(key: str) -> int:
            try:
                return int(h.get(key) or 0)
            except ValueError:
                return 0

        try:
            handle = json.loads(h["handle"]) if h.get("handle") else {}
        except ValueError:
            handle = {}
        return cls(
            id=inst_id,
            tier=h.get("tier") or tier,
            state=InstanceState(h.get("state") or "stopped"),
            url=h.get("url", ""),
            stage=h.get("stage", ""),
            reason=h.get("reason", ""),
            started_by=h.get("started_by", ""),
            boot_started=i("boot_started"),
            billing_since=i("billing_since"),
            standby_since=i("standby_since"),
            last_active=i("last_active"),
            ready_at=i("ready_at"),
            ready_cb=i("ready_cb"),
            changed_at=i("changed_at"),
            handle=handle if isinstance(handle, dict) else {},
            cancel=h.get("cancel", ""),
            then=h.get("then", ""),
            inflight=inflight,
        )


@dataclass
class TierView:
    """A snapshot of one tier, for display and for decisions that are re-checked atomically."""

    name: str
    instances: list[InstanceView]
    queued: int = 0
    gpu_ms: int = 0
    standby_ms: int = 0
    starts: int = 0
    boots: list[float] = field(default_factory=list)

    @property
    def state(self) -> InstanceState:
        return tier_state(i.state for i in self.instances)

    @property
    def failed(self) -> InstanceView | None:
        """The most recent failed instance (its reason is the tier's), when the tier shows failed."""
        if self.state != InstanceState.FAILED:
            return None
        return max((i for i in self.instances if i.state == InstanceState.FAILED), key=lambda i: i.changed_at)

    @property
    def failed_reason(self) -> str:
        f = self.failed
        return f.reason if f else ""

    @property
    def inflight(self) -> int:
        return sum(i.inflight for i in self.instances)

    @property
    def last_active(self) -> int:
        return max((i.last_active for i in self.instances), default=0)

    def billed_ms(self, at: int) -> int:
        """Closed billing plus the instances billing right now."""
        return self.gpu_ms + sum(max(0, at - i.billing_since) for i in self.instances if i.billing_since)

    def standby_billed_ms(self, at: int) -> int:
        return self.standby_ms + sum(max(0, at - i.standby_since) for i in self.instances if i.standby_since)


class State:
    """One gateway process's handle on the instances' shared state."""

    def __init__(self, redis: aioredis.Redis, gateway_id: str | None = None) -> None:
        self.redis = redis
        self.gateway_id = gateway_id or uuid.uuid4().hex[:12]
        self._transition = redis.register_script(_TRANSITION)
        self._unlock = redis.register_script(_UNLOCK)
        self._renew = redis.register_script(_RENEW)

    # --- reading -----------------------------------------------------------------------

    async def instance(self, inst_id: str, tier: str = "") -> InstanceView:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(inst_key(inst_id))
        pipe.zcount(leases_key(inst_id), now_ms(), "+inf")
        h, n = await pipe.execute()
        return InstanceView.from_hash(inst_id, tier, h, n)

    async def tier(self, name: str, inst_ids: list[str]) -> TierView:
        """One round trip for everything a tier's display or decision needs."""
        now = now_ms()
        pipe = self.redis.pipeline(transaction=False)
        for inst_id in inst_ids:
            pipe.hgetall(inst_key(inst_id))
            pipe.zcount(leases_key(inst_id), now, "+inf")
        pipe.zcount(queue_key(name), now, "+inf")
        pipe.hgetall(f"{PREFIX}ledger:{name}")
        pipe.lrange(f"{PREFIX}boots:{name}", 0, 49)
        out = await pipe.execute()
        instances = [InstanceView.from_hash(i, name, out[2 * k], out[2 * k + 1]) for k, i in enumerate(inst_ids)]
        queued, ledger, boots = out[-3:]
        return TierView(
            name=name,
            instances=instances,
            queued=queued,
            gpu_ms=int(ledger.get("gpu_ms") or 0),
            standby_ms=int(ledger.get("standby_ms") or 0),
            starts=int(ledger.get("starts") or 0),
            boots=[float(b) for b in boots],
        )

    # --- changing ------------------------------------------------------------------------

    async def transition(
        self,
        inst_id: str,
        tier: str,
        expected: InstanceState | tuple[InstanceState, ...],
        new: InstanceState,
        *,
        idle_ms: int | None = None,
        **fields: object,
    ) -> bool:
        """Move an instance from one of `expected` to `new`, setting `fields` with it, or change nothing.

        False means another process (or a request) got there first: the caller's read was
        stale, and it must not act. A transition the table forbids raises: that is a bug.
        """
        exp = (expected,) if isinstance(expected, InstanceState) else expected
        args: list[object] = [",".join(exp), new.value, now_ms(), -1 if idle_ms is None else idle_ms, tier]
        for k, v in fields.items():
            args += [k, _field(v)]
        ok, current = await self._transition(keys=[inst_key(inst_id), leases_key(inst_id)], args=args)
        if int(ok) == -1:
            raise ForbiddenTransition(f"{inst_id}: {current} -> {new} is not a transition of the state machine")
        return int(ok) == 1

    async def set_fields(self, inst_id: str, **fields: object) -> None:
        """Fields that are not the state (stage, url, the ready callback's time)."""
        await self.redis.hset(inst_key(inst_id), mapping={k: _field(v) for k, v in fields.items()})

    # --- the per-tier owner lock -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, tier: str, *, wait: float = 0.0) -> AsyncIterator[bool]:
        """Yield True when this process owns tier `tier` (False: another does; do nothing).

        The lock is renewed while held. If a renewal finds it gone (this process stalled past
        the TTL, or Redis lost it), the task holding it is cancelled and `LockLost` is raised
        from the `async with`, so two owners never act on one tier.
        """
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
        owner = asyncio.current_task()
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lock(key, token, owner, lost))
        try:
            yield True
        except asyncio.CancelledError:
            if lost.is_set() and owner is not None and owner.uncancel() == 0:
                raise LockLost(f"lost the lock of tier {tier!r}; its work was cancelled") from None
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(Exception):
                await self._unlock(keys=[key], args=[token])

    async def _keep_lock(self, key: str, token: str, owner: asyncio.Task | None, lost: asyncio.Event) -> None:
        valid_until = time.monotonic() + LOCK_TTL_MS / 1000
        while True:
            await asyncio.sleep(LOCK_RENEW_EVERY)
            try:
                renewed = bool(await self._renew(keys=[key], args=[token, LOCK_TTL_MS]))
            except Exception as exc:  # noqa: BLE001 - Redis away: the lock may still be ours until its TTL
                log.warning("could not renew %s: %s", key, exc)
                renewed = time.monotonic() < valid_until - LOCK_RENEW_EVERY
            else:
                if renewed:
                    valid_until = time.monotonic() + LOCK_TTL_MS / 1000
            if not renewed:
                log.error("lost %s while holding it: cancelling the owner's work", key)
                lost.set()
                if owner is not None:
                    owner.cancel()
                return

    async def lock_holder(self, tier: str) -> str | None:
        return await self.redis.get(f"{PREFIX}lock:{tier}")

    # --- events -------------------------------------------------------------------------

    async def event(self, tier: str, event: str, *, instance: str = "", reason: str = "", actor: str = "") -> None:
        entry = {
            "ts": str(now_ms()),
            "tier": tier,
            "instance": instance,
            "event": event,
            "reason": reason,
            "actor": actor or f"gateway {self.gateway_id}",
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(f"{PREFIX}events", entry, maxlen=10_000, approximate=True)
        pipe.publish(f"{PREFIX}ch:{tier}", event)
        await pipe.execute()

    async def events(self, count: int = 100) -> list[dict[str, str]]:
        rows = await self.redis.xrevrange(f"{PREFIX}events", count=count)
        return [fields for _, fields in rows]

    async def publish(self, tier: str, what: str) -> None:
        await self.redis.publish(f"{PREFIX}ch:{tier}", what)


def _field(value: object) -> str:
    """Redis hash values are strings; a provider's handle is kept as JSON."""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else str(value)
