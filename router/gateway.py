"""The gateway: the one object the front-ends (the HTTP API, the Gradio UI) talk to.

It assembles the engine (shared state, leases, ledger, lifecycle, admission, supervisor,
answer path, cache) and offers what a front-end does with it: prepare and answer a chat
request, show and move tiers, read events and costs, manage cached answers, apply a new
config. No front-end reaches past it into the engine's parts, so the engine can change
behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from . import request
from . import status as status_mod
from .admission import Admission, Progress, ProgressFn
from .answer import Answer, Answers, Meta
from .auth import LoginLimiter
from .backends.base import Backend
from .background import Background
from .cache import Entry, ResponseCache
from .config import PACKAGED_CONFIG, Config, ConfigError, parse_config
from .errors import NotFound
from .leases import Leases
from .ledger import Ledger
from .lifecycle import Lifecycle
from .machine import InstanceState
from .metrics import Metrics
from .notifier import Notifier
from .providers import build_providers
from .redis_server import RedisHandle, open_redis
from .request import ChatRequest, parse_json
from .state import PREFIX, State
from .supervisor import Supervisor

log = logging.getLogger("tiergate.gateway")

__all__ = ["Answer", "ChatRequest", "Entry", "Gateway", "Meta", "Progress", "ProgressFn", "parse_json"]


class Gateway:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.limits = request.limits_for(cfg)
        self.cache = ResponseCache(cfg.cache, cfg.data_dir() / "cache")
        self.metrics = Metrics()
        self.later = Background()
        self.redis: RedisHandle | None = None
        self.logins = LoginLimiter(lambda: self.state.redis)  # failed logins, counted with every gateway

    # --- assembling and tearing down ----------------------------------------------------

    async def start(self) -> None:
        self.redis = open_redis(self.cfg)
        await self.redis.client.ping()
        client = self.redis.client
        self.state = State(client)
        self.leases = Leases(client, self.state.gateway_id)
        self.ledger = Ledger(client)
        self.notifier = Notifier(client)
        self.notifier.start()
        self.backends = build_backends(self.cfg)
        self.providers = build_providers(self.cfg)
        self.lifecycle = Lifecycle(self.cfg, self.state, self.ledger, self.notifier, self.providers, self.backends)
        self.admission = Admission(self.cfg, self.state, self.leases, self.ledger, self.notifier, self.lifecycle)
        self.supervisor = Supervisor(self.cfg, self.state, self.leases, self.ledger, self.lifecycle)
        self.answers = Answers(self.cfg, self.cache, self.admission, self.lifecycle, self.leases, self.ledger,
                               self.backends, self.metrics, self.later)
        await self.lifecycle.start()
        self.supervisor.start()

    async def aclose(self) -> None:
        """Stop what dies with this process first (its local workers), then let the rest finish.

        Every step is bounded, so a stuck part (a cloud API, a disk) cannot keep the process from
        exiting; whatever a step leaves undone is picked up by the next gateway's reconcile.
        """
        await _bounded("the supervisor", self.supervisor.stop(), 10)
        await _bounded("this process's workers", self.lifecycle.shutdown(), 60)
        await _bounded("pending bookkeeping", self.later.drain(), 15)
        await _bounded("answers on their way to disk", self.cache.flush(), 15)
        await _bounded("the notifier", self.notifier.aclose(), 5)
        for b in self.backends.values():
            await _bounded("a backend", b.aclose(), 5)
        for p in self.providers.values():
            await _bounded("a provider", p.aclose(), 5)
        await _bounded("the cache", asyncio.to_thread(self.cache.close), 15)
        if self.redis is not None:
            await _bounded("Redis", self.redis.aclose(), 10)

    # --- chat ------------------------------------------------------------------------------

    def prepare(self, body: Any) -> ChatRequest:
        """Check everything about a request before any machine is touched (router/request.py)."""
        return request.prepare(body, self.cfg, self.limits)

    async def prepare_async(self, body: Any, size: int) -> ChatRequest:
        """Large bodies (images, video) are decoded in a thread, off the event loop."""
        return await request.prepare_async(body, self.cfg, self.limits, size)

    async def answer(self, req: ChatRequest, on_progress: ProgressFn | None = None, asker: str = "") -> Answer:
        """From the cache, or from the routed tier (booting it and reporting progress if it must)."""
        return await self.answers.answer(req, on_progress, asker)

    async def warm(self, req: ChatRequest, why: str, asker: str = "") -> bool:
        """Warm-up on intent: boot the tier a prepared request would go to, if it wants that and is down."""
        tier = self.cfg.tiers.get(req.tier)
        if tier is None or not tier.warm_on_intent:
            return False
        self.later.spawn(self.ledger.trace(event="intent", t=f"{time.time():.3f}", tier=req.tier, session=asker))
        view = await self.lifecycle.view(tier)
        if view.state not in (InstanceState.STOPPED, InstanceState.FAILED):
            return False
        self.lifecycle.ensure(req.tier, why, started_by="intent", actor="chat UI")
        return True

    async def present(self, askers: list[str]) -> None:
        """These UI sessions have their page open (the idle policy keeps a tier up for a present asker)."""
        await self.ledger.present(askers)

    async def gone(self, asker: str) -> None:
        """A UI session's page closed: the idle policy stops waiting for them."""
        await self.ledger.gone(asker)
        await self.ledger.trace(event="close", t=f"{time.time():.3f}", session=asker)

    # --- tiers -----------------------------------------------------------------------------

    async def status(self) -> list[dict]:
        return await status_mod.tiers_status(self.cfg, self.state, self.ledger, self.lifecycle.billed)

    async def tier_state(self, name: str) -> str:
        return str((await self.lifecycle.view(self._tier(name))).state)

    async def start_tier(self, name: str, actor: str) -> str:
        """Begin a start and return the tier's state once it moved (`starting`, or `failed` with a refusal).

        The boot itself goes on in the background; a tier already up answers `ready`.
        """
        tier = self._tier(name)
        deadline = asyncio.get_running_loop().time() + 5
        changed = self.notifier.waiter(name)
        task = self.lifecycle.ensure(name, "started by an admin", started_by="admin", actor=actor)
        while True:
            state = (await self.lifecycle.view(tier)).state
            left = deadline - asyncio.get_running_loop().time()
            if state != InstanceState.STOPPED or task.done() or left <= 0:
                return str(state)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, 0.25))
            changed = self.notifier.waiter(name)

    async def prewarm(self, name: str, actor: str) -> None:
        self._tier(name)
        self.lifecycle.ensure(name, "pre-warmed by an admin", started_by="admin", actor=actor)

    async def stop_tier(self, name: str, actor: str) -> str:
        self._tier(name)
        await self.lifecycle.admin_stop(name, actor=actor)
        return await self.tier_state(name)

    async def instance_ready(self, instance_id: str) -> bool:
        return await self.lifecycle.instance_ready(instance_id)

    async def events(self, count: int = 100) -> list[dict[str, str]]:
        return await self.state.events(count)

    async def daily_costs(self, days: int) -> list[dict]:
        return await status_mod.daily(self.cfg, self.state, self.ledger, days)

    async def idle_policy(self) -> list[dict]:
        """Per tier: the keep-alive `decide` chose now and why, and the simulator's replay of the last 7 days
        (the gateway's own trace) under the tier's policy, against always-on and a fixed 5 minutes."""
        import dataclasses

        from .simulate import rows_from_stream, weekly_saving

        now = time.time()
        entries = await self.state.redis.xrange(f"{PREFIX}trace", min=f"{int((now - 7 * 86400) * 1000)}-0")
        rows = await asyncio.to_thread(rows_from_stream, [fields for _, fields in entries])
        out = []
        for row in await self.status():
            tier = self.cfg.tiers[row["name"]]
            week = await asyncio.to_thread(weekly_saving, rows, tier, now)
            keep = row["keep_alive"]
            out.append({"tier": tier.name, "keep_alive": "-" if keep is None else _minutes(keep),
                        "why": row["keep_reason"] or f"{row['state']}: nothing to keep up",
                        "week": dataclasses.asdict(week)})
        return out

    async def healthy(self) -> str:
        """'' when the gateway can serve, else what is wrong."""
        try:
            await self.state.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means we cannot serve
            return f"redis: {exc}"
        return ""

    def metrics_text(self, rows: list[dict]) -> bytes:
        return self.metrics.render(rows)

    def _tier(self, name: str):
        if name not in self.cfg.tiers:
            raise NotFound(f"no tier {name!r}; tiers: {', '.join(self.cfg.tiers)}")
        return self.cfg.tiers[name]

    # --- cached answers (the presenter) ------------------------------------------------------

    async def cached(self, query: str = "") -> list[Entry]:
        return await self.cache.entries(query)

    async def cached_entry(self, key: str) -> Entry | None:
        return await self.cache.get(key) if key else None

    async def pin(self, key: str, pinned: bool) -> bool:
        return await self.cache.pin(key, pinned)

    async def export(self, keys: list[str] | None) -> bytes:
        return await self.cache.export(keys)

    async def import_set(self, data: bytes) -> int:
        return await self.cache.import_set(data)

    # --- the config ---------------------------------------------------------------------

    def config_path(self) -> Path:
        return Path(self.cfg.path) if self.cfg.path else PACKAGED_CONFIG

    async def config_text(self) -> str:
        return await asyncio.to_thread(self.config_path().read_text, encoding="utf-8")

    async def check_config(self, text: str) -> tuple[Config | None, list[str]]:
        """Validate without saving: (the config, []) or (None, every problem as FILE:LINE: message)."""
        try:
            return await asyncio.to_thread(parse_config, text, self.cfg.path or "tiers.toml"), []
        except ConfigError as exc:
            return None, exc.problems

    async def save_config(self, text: str) -> list[str]:
        """Validate, then atomically replace the config (keeping a backup) and hot-reload it.

        Returns the problems instead when there are any; nothing is written then.
        """
        target = self.config_path()
        if target.resolve() == PACKAGED_CONFIG.resolve():
            target = Path("tiers.toml")  # never write into the installed package
        try:
            new_cfg = parse_config(text, str(target))
        except ConfigError as exc:
            return exc.problems
        await asyncio.to_thread(_atomic_write, target, text)
        await self.reload(new_cfg)
        return []

    async def reload(self, new_cfg: Config) -> None:
        """Switch to a new config without dropping requests in flight.

        Everything read from the config follows: routing, tiers, media limits, the backends'
        request timeout, the ECS settings. Tiers that disappear are drained and stopped.
        """
        gone = [self.cfg.tiers[n] for n in self.cfg.tiers if n not in new_cfg.tiers]
        if new_cfg.providers.ecs != self.cfg.providers.ecs and "ecs" in self.providers:
            old = self.providers.pop("ecs")
            self.lifecycle.background(old.aclose())
        for kind, provider in build_providers(new_cfg).items():
            self.providers.setdefault(kind, provider)
        for kind, backend in build_backends(new_cfg).items():
            self.backends.setdefault(kind, backend)
        for backend in self.backends.values():
            backend.timeout = new_cfg.gateway.request_timeout
        self.limits = request.limits_for(new_cfg)
        self.cfg = new_cfg
        self.cache.cfg = new_cfg.cache
        for part in (self.lifecycle, self.lifecycle.budget, self.admission, self.supervisor, self.answers):
            part.cfg = new_cfg
        for tier in gone:
            self.lifecycle.background(self.lifecycle.retire(tier))
        await self.state.event("*", "config_reloaded", reason=f"{new_cfg.path}: {len(new_cfg.tiers)} tiers")


async def _bounded(what: str, step: Awaitable, seconds: float) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        log.error("shutdown: %s did not finish within %.0fs; going on", what, seconds)
    except Exception:
        log.exception("shutdown: %s failed; going on", what)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def build_backends(cfg: Config) -> dict[str, Backend]:
    """Only the backends the tiers use; the Gradio client is imported only when needed."""
    kinds = {t.backend for t in cfg.tiers.values()}
    timeout = cfg.gateway.request_timeout
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
