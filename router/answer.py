"""The answer path: from the cache when it can, else from a tier, and nothing else in the way.

A cache hit is answered from disk before Redis is asked anything, so replays keep working
while Redis is away. A miss leases an instance (waiting for a boot if it must), forwards
the request, and passes the worker's bytes through as they come. Everything that is not
the answer itself (storing it, its thumbnail, the day's counters, the trace) happens after
it has gone out, as bounded background work; only the lease release is exact. A stream
whose worker breaks off ends with an OpenAI-style `error` event rather than a cut
connection. Identical requests in flight are forwarded once (single flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .admission import Admission, Lease, ProgressFn
from .backends.base import Backend
from .background import Background
from .cache import Entry, ResponseCache, cache_key
from .config import Config
from .errors import TiergateError, TierUnavailable, UpstreamError, WorkerUnreachable
from .leases import Leases
from .ledger import Ledger
from .lifecycle import Lifecycle
from .metrics import Metrics
from .request import ChatRequest
from .sse import SSEReader, replay

log = logging.getLogger("tiergate.answer")
COMPLETE = ("stop", "length", "tool_calls")  # finish reasons of answers worth keeping


@dataclass
class Meta:
    """What the client is told about how its answer was produced."""

    tier: str
    gpu: str
    task: str
    cache: str  # hit | miss | bypass
    wait_ms: int = 0
    requested_tier: str = ""
    fallback_reason: str = ""
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    cost: float = 0.0
    price_per_hour: float = 0.0  # captured at the start: a hot reload may remove the tier mid-answer
    model: str = ""

    def headers(self) -> dict[str, str]:
        h = {
            "x-tiergate-tier": self.tier,
            "x-tiergate-task": self.task,
            "x-tiergate-cache": self.cache,
            "x-tiergate-wait-ms": str(self.wait_ms),
        }
        if self.fallback_reason:
            h["x-tiergate-fallback"] = self.fallback_reason
        return h


@dataclass
class Answer:
    meta: Meta
    response: dict | None = None  # a complete chat.completion
    chunks: AsyncIterator[bytes] | None = None  # OpenAI SSE bytes, for stream requests


def error_event(exc: TiergateError) -> bytes:
    """The last event of a stream that broke off, in the shape OpenAI clients raise from."""
    return b"data: " + json.dumps(exc.body(), ensure_ascii=False).encode() + b"\n\n"


class Answers:
    def __init__(
        self, cfg: Config, cache: ResponseCache, admission: Admission, lifecycle: Lifecycle, leases: Leases,
        ledger: Ledger, backends: dict[str, Backend], metrics: Metrics, later: Background,
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.admission = admission
        self.lifecycle = lifecycle
        self.leases = leases
        self.ledger = ledger
        self.backends = backends
        self.metrics = metrics
        self.later = later

    async def answer(self, req: ChatRequest, on_progress: ProgressFn | None = None, asker: str = "") -> Answer:
        tier_cfg = self.cfg.tiers.get(req.tier)
        if tier_cfg is None:  # removed by a config reload since the request was prepared
            raise TierUnavailable(f"tier {req.tier!r} was removed from the config; send the request again")
        arrived = time.time()
        key = cache_key(tier_cfg.model or req.tier, req.canonical, req.body) if req.use_cache else ""
        if key:
            entry = await self.cache.get(key)
            if entry is None and (leader := self.cache.leader(key)) is not None:
                entry = await asyncio.shield(leader)  # an identical request is being answered: share it
            if entry is not None:
                return self._from_cache(req, entry, arrived, asker)
            self.cache.begin(key)
        try:
            return await self._forward(req, key, on_progress, arrived, asker)
        except BaseException:
            if key:
                self.cache.finish(key, None)
            raise

    def _from_cache(self, req: ChatRequest, entry: Entry, arrived: float, asker: str) -> Answer:
        tier = self.cfg.tiers.get(entry.tier)
        meta = Meta(tier=entry.tier, gpu=tier.gpu if tier else "", task=req.task, cache="hit", requested_tier=req.tier)
        self.metrics.request(entry.tier, "hit", 0.0)
        self.metrics.cache(req.tier, hit=True)
        self._account(entry.tier, req, meta, arrived, asker, entry.response.get("usage"))
        if req.stream:
            return Answer(meta, chunks=replay(entry.response))
        return Answer(meta, response=entry.response)

    async def _forward(
        self, req: ChatRequest, key: str, on_progress: ProgressFn | None, arrived: float, asker: str
    ) -> Answer:
        for attempt in (1, 2):
            lease = await self.admission.acquire(req.tier, on_progress, req.unfit, asker)
            tier_cfg = self.cfg.tiers[lease.tier]
            meta = Meta(tier=lease.tier, gpu=tier_cfg.gpu, task=req.task, cache="miss" if key else "bypass",
                        wait_ms=int(lease.waited * 1000), requested_tier=req.tier, fallback_reason=lease.fallback_reason,
                        price_per_hour=tier_cfg.price_per_hour, model=tier_cfg.model)
            self.metrics.request(lease.tier, meta.cache, lease.waited)
            if key:
                self.metrics.cache(req.tier, hit=False)
            body = {**req.body, "model": tier_cfg.model or req.body.get("model", "")}
            backend = self.backends[tier_cfg.backend]
            try:
                if req.stream:
                    chunks = backend.stream(lease.url, body, tier=lease.tier)
                    first = await chunks.__anext__()  # a refusal surfaces here, before any byte is sent
                    self.leases.unread(lease.id)
                    gen = self._pass_through(req, key, lease, meta, first, chunks, arrived, asker)
                    return Answer(meta, chunks=gen)
                response = await backend.complete(lease.url, body, tier=lease.tier)
            except WorkerUnreachable as exc:
                await self._end(lease, meta)
                log.warning("tier %s, instance %s: %s", lease.tier, lease.instance, exc.detail)
                found = self.cfg.instance(lease.instance)
                if found:  # re-check the machine now, before the retry (it may have died)
                    await self.lifecycle.reconciler.check(*found, exc.detail)
                if attempt == 2:
                    raise
                continue  # the instance vanished under us (crash, spot reclaim): once more, elsewhere
            except BaseException:
                await self._end(lease, meta)
                raise
            await self._end(lease, meta, wait=False)
            if key:
                self._keep(req, key, meta, response)
            self._account(lease.tier, req, meta, arrived, asker, response.get("usage"))
            return Answer(meta, response=response)
        raise AssertionError("unreachable")

    async def _pass_through(
        self, req: ChatRequest, key: str, lease: Lease, meta: Meta, first: bytes, chunks: AsyncIterator[bytes],
        arrived: float, asker: str,
    ) -> AsyncIterator[bytes]:
        """Yield the worker's bytes as they come; keep the answer only if it ended properly.

        The lease is held until the last byte, so an idle stop never cuts a stream; while a
        chunk waits for its reader the lease is marked unread (see `leases.STALL_SECONDS`).
        """
        reader = SSEReader() if key else None
        kept = False
        try:
            self.leases.read(lease.id)
            if reader:
                reader.feed(first)
            yield first
            try:
                async for chunk in chunks:
                    if reader:
                        reader.feed(chunk)
                    self.leases.unread(lease.id)
                    yield chunk
                    self.leases.read(lease.id)
            except UpstreamError as exc:
                log.warning("tier %s: the stream broke off: %s", lease.tier, exc.detail)
                yield error_event(exc)
                return
            if reader and reader.complete:
                self._keep(req, key, meta, reader.completion())
                kept = True
        finally:
            # Runs also when the client hangs up, inside a cancelled task: settle the
            # single-flight slot first (no await), then release the lease in a shielded task.
            if key and not kept:
                self.cache.finish(key, None)
            await self._end(lease, meta, chunks)
            self._account(lease.tier, req, meta, arrived, asker, reader.usage if reader else None)

    async def _end(
        self, lease: Lease, meta: Meta, chunks: AsyncIterator[bytes] | None = None, *, wait: bool = True
    ) -> None:
        """Account the request and release its lease, even from a task being cancelled.

        `wait=False` answers the client first and releases right after (one Redis round
        trip less on the warm path); the lease is dropped from the heartbeat at once.
        """
        meta.seconds = time.monotonic() - meta.started  # `started` is after the wait for the tier
        meta.cost = meta.seconds / 3600 * meta.price_per_hour

        async def settle() -> None:
            if chunks is not None:
                with contextlib.suppress(Exception):
                    await chunks.aclose()  # type: ignore[attr-defined]
            await self.admission.release(lease)

        task = self.later.spawn(settle())
        if wait:
            await asyncio.shield(task)

    def _keep(self, req: ChatRequest, key: str, meta: Meta, response: dict) -> None:
        """Settle the single flight with the answer now; write it (and its thumbnail) to disk later."""
        choices = response.get("choices") or []
        if not choices or choices[0].get("finish_reason") not in COMPLETE:
            self.cache.finish(key, None)
            return
        entry = Entry(key=key, response=response, tier=meta.tier, task=req.task, model=meta.model,
                      question=req.question, created=time.time())
        self.cache.keep(entry, req.body.get("messages") or [])
        self.cache.finish(key, entry)

    def _account(self, tier: str, req: ChatRequest, meta: Meta, arrived: float, asker: str, usage: dict | None) -> None:
        """The day's counters, the asker's last answer, one trace row: in memory, written once a second."""
        usage = usage or {}
        if meta.cache == "hit":  # no GPU worked: the day's counters, and nothing for the trace the simulator replays
            self.ledger.account(tier, meta.cache, asker, None)
            return
        self.ledger.account(tier, meta.cache, asker, {
            "t": f"{arrived:.3f}", "tier": tier, "task": req.task, "mode": req.mode, "session": asker,
            "duration_s": f"{meta.seconds:.3f}", "prompt_tokens": usage.get("prompt_tokens", ""),
            "output_tokens": usage.get("completion_tokens", ""), "cache": meta.cache,
        })

