"""The request path: validate, route, answer from cache or from a tier, account.

Everything the HTTP API and the Gradio UI do with a chat request goes through
`Gateway.prepare` and `Gateway.answer`, so both front-ends route, cache and bill alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import request
from .backends.base import Backend
from .cache import Entry, ResponseCache, cache_key, thumbnail
from .config import PACKAGED_CONFIG, Config, ConfigError, parse_config
from .errors import TierUnavailable, WorkerUnreachable
from .lifecycle import Lease, Lifecycle, ProgressFn
from .media import MediaLimits
from .metrics import Metrics
from .providers import build_providers
from .redis_server import RedisHandle, open_redis
from .request import ChatRequest
from .sse import SSEReader, replay
from .state import Notifier, State
from .status import tiers_status

log = logging.getLogger("tiergate.gateway")

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


class Gateway:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.limits = MediaLimits(
            max_image_bytes=cfg.gateway.max_image_size,
            max_video_bytes=cfg.gateway.max_video_size,
            max_attachments=cfg.gateway.max_attachments,
        )
        self.redis: RedisHandle | None = None
        self.cache = ResponseCache(cfg.cache, cfg.data_dir() / "cache")
        self.metrics = Metrics()
        self.backends: dict[str, Backend] = {}
        self.lifecycle: Lifecycle

    async def start(self) -> None:
        self.redis = open_redis(self.cfg)
        await self.redis.client.ping()
        self.state = State(self.redis.client, self.cfg)
        self.notifier = Notifier(self.redis.client)
        self.notifier.start()
        self.backends = _build_backends(self.cfg, self.cfg.gateway.request_timeout)
        self.providers = build_providers(self.cfg)
        self.lifecycle = Lifecycle(self.cfg, self.state, self.notifier, self.providers, self.backends)
        await self.lifecycle.start()

    async def aclose(self) -> None:
        await self.lifecycle.shutdown()
        await self.notifier.aclose()
        for b in self.backends.values():
            await b.aclose()
        for p in self.providers.values():
            await p.aclose()
        self.cache.close()
        if self.redis is not None:
            await self.redis.aclose()

    # --- validation and routing ------------------------------------------------------

    def prepare(self, body: Any) -> ChatRequest:
        """Check everything about a request before any machine is touched (router/request.py)."""
        return request.prepare(body, self.cfg, self.limits)

    async def prepare_async(self, body: Any, size: int) -> ChatRequest:
        """Large bodies (images, video) are decoded in a thread, off the event loop."""
        return await request.prepare_async(body, self.cfg, self.limits, size)

    # --- answering -------------------------------------------------------------------

    async def answer(self, req: ChatRequest, on_progress: ProgressFn | None = None) -> Answer:
        tier_cfg = self.cfg.tiers.get(req.tier)
        if tier_cfg is None:  # removed by a config reload since the request was prepared
            raise TierUnavailable(f"tier {req.tier!r} was removed from the config; send the request again")
        key = cache_key(tier_cfg.model or req.tier, req.canonical, req.body) if req.use_cache else ""
        if key:
            entry = await self.cache.get(key)
            if entry is None and (leader := self.cache.leader(key)) is not None:
                entry = await asyncio.shield(leader)  # an identical request is being answered: share it
            if entry is not None:
                return self._from_cache(req, entry)
            self.cache.begin(key)
        try:
            return await self._forward(req, key, on_progress)
        except BaseException:
            if key:
                self.cache.finish(key, None)
            raise

    def _from_cache(self, req: ChatRequest, entry: Entry) -> Answer:
        meta = Meta(tier=entry.tier, gpu=self.cfg.tiers[entry.tier].gpu if entry.tier in self.cfg.tiers else "",
                    task=req.task, cache="hit", requested_tier=req.tier)
        self.metrics.cache(req.tier, hit=True)
        self._count_day(entry.tier, "cache_hits")
        if req.stream:
            return Answer(meta, chunks=replay(entry.response))
        return Answer(meta, response=entry.response)

    async def _forward(self, req: ChatRequest, key: str, on_progress: ProgressFn | None) -> Answer:
        for attempt in (1, 2):
            lease = await self.lifecycle.acquire(req.tier, on_progress)
            tier_cfg = self.cfg.tiers[lease.tier]
            meta = Meta(tier=lease.tier, gpu=tier_cfg.gpu, task=req.task, cache="miss" if key else "bypass",
                        wait_ms=int(lease.waited * 1000), requested_tier=req.tier, fallback_reason=lease.fallback_reason,
                        price_per_hour=tier_cfg.price_per_hour, model=tier_cfg.model)
            self.metrics.request(lease.tier, meta.cache, lease.waited)
            if key:
                self.metrics.cache(req.tier, hit=False)
                self._count_day(lease.tier, "cache_misses")
            self._count_day(lease.tier, "requests")
            body = {**req.body, "model": tier_cfg.model or req.body.get("model", "")}
            backend = self.backends[tier_cfg.backend]
            try:
                if req.stream:
                    chunks = backend.stream(lease.url, body)
                    first = await chunks.__anext__()  # a refusal surfaces here, before any byte is sent
                    return Answer(meta, chunks=self._pass_through(req, key, lease, meta, first, chunks))
                response = await backend.complete(lease.url, body)
            except WorkerUnreachable as exc:
                await self._end(lease, meta)
                await self.lifecycle.report_broken(lease, str(exc))
                if attempt == 2:
                    raise
                continue  # the instance vanished under us (crash, spot reclaim): once more, elsewhere
            except BaseException:
                await self._end(lease, meta)
                raise
            await self._end(lease, meta, wait=False)
            if key:
                await self._store(req, key, meta, response)
            return Answer(meta, response=response)
        raise AssertionError("unreachable")

    async def _pass_through(
        self, req: ChatRequest, key: str, lease: Lease, meta: Meta, first: bytes, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """Yield the worker's bytes as they come; cache the answer only if it ended properly.

        The lease is held until the last byte, so an idle stop never cuts a stream.
        """
        reader = SSEReader() if key else None
        stored = False
        try:
            if reader:
                reader.feed(first)
            yield first
            async for chunk in chunks:
                if reader:
                    reader.feed(chunk)
                yield chunk
            if reader and reader.complete:
                await self._store(req, key, meta, reader.completion())
                stored = True
        finally:
            # Runs also when the client hangs up, inside a cancelled task: settle the
            # single-flight slot first (no await), then release the lease in a shielded
            # task so a cancellation cannot leave it held (and the machine pinned on).
            if key and not stored:
                self.cache.finish(key, None)
            await self._end(lease, meta, chunks)

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
            await self.lifecycle.release(lease)

        task = asyncio.ensure_future(settle())
        self.lifecycle.track(task)
        if wait:
            await asyncio.shield(task)

    async def _store(self, req: ChatRequest, key: str, meta: Meta, response: dict) -> None:
        choices = response.get("choices") or []
        if not choices or choices[0].get("finish_reason") not in ("stop", "length", "tool_calls"):
            self.cache.finish(key, None)
            return  # only complete, successful answers are kept
        thumb = await asyncio.to_thread(thumbnail, req.body.get("messages") or [])
        entry = Entry(key=key, response=response, tier=meta.tier, task=req.task, model=meta.model,
                      question=req.question, created=time.time(), thumbnail=thumb)
        await self.cache.put(entry)
        self.cache.finish(key, entry)

    def _count_day(self, tier: str, what: str) -> None:
        self.lifecycle.background(self.state.count_day(tier, what))

    # --- config changes ----------------------------------------------------------------

    async def save_config(self, text: str) -> list[str]:
        """Validate, then atomically replace the config (keeping a backup) and hot-reload it.

        Returns the problems instead when there are any; nothing is written then.
        """
        target = Path(self.cfg.path)
        if not self.cfg.path or target.resolve() == PACKAGED_CONFIG.resolve():
            target = Path("tiers.toml")  # never write into the installed package
        try:
            new_cfg = parse_config(text, str(target))
        except ConfigError as exc:
            return exc.problems
        await asyncio.to_thread(_atomic_write, target, text)
        await self.reload(new_cfg)
        return []

    async def config_text(self) -> str:
        path = Path(self.cfg.path) if self.cfg.path else PACKAGED_CONFIG
        return await asyncio.to_thread(path.read_text, encoding="utf-8")

    async def reload(self, new_cfg: Config) -> None:
        """Switch to a new config without dropping requests in flight.

        Tiers that disappear are drained (their in-flight requests finish) and stopped.
        """
        gone = [self.cfg.tiers[n] for n in self.cfg.tiers if n not in new_cfg.tiers]
        for kind, provider in build_providers(new_cfg).items():
            self.providers.setdefault(kind, provider)
        for kind, backend in _build_backends(new_cfg, new_cfg.gateway.request_timeout).items():
            self.backends.setdefault(kind, backend)
        self.cfg = new_cfg
        self.cache.cfg = new_cfg.cache
        self.state.cfg = new_cfg
        self.lifecycle.cfg = new_cfg
        for tier in gone:
            self.lifecycle.background(self.lifecycle.retire(tier))
        await self.state.event("*", "config_reloaded", reason=f"{new_cfg.path}: {len(new_cfg.tiers)} tiers")

    # --- status ----------------------------------------------------------------------

    async def tiers_status(self) -> list[dict]:
        return await tiers_status(self.state, self.cfg)


def _build_backends(cfg: Config, timeout: float) -> dict[str, Backend]:
    """Only the backends the tiers use; the Gradio client is imported only when needed."""
    kinds = {t.backend for t in cfg.tiers.values()}
    out: dict[str, Backend] = {}
    if "openai" in kinds:
        from .backends.openai import OpenAIBackend

        out["openai"] = OpenAIBackend(timeout)
    if "gradio" in kinds:
        from .backends.gradio import GradioBackend

        out["gradio"] = GradioBackend(timeout=timeout)
    return out


def _atomic_write(target: Path, text: str) -> None:
    """Write beside the target, fsync, keep the old file as `.bak`, then rename over it."""
    target = target.resolve()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    if target.exists():
        backup = target.with_name(target.name + ".bak")
        backup.write_bytes(target.read_bytes())
    os.replace(tmp, target)
