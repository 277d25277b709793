"""From a raw request body to a validated `ChatRequest`, before any machine is touched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import routing
from .config import Config
from .errors import BadRequest, NotFound
from .media import MediaLimits, parse_messages

_OWN_FIELDS = ("tiergate",)  # body fields the gateway consumes itself rather than forwarding


@dataclass
class ChatRequest:
    body: dict  # what goes to the worker, minus `model`, which the tier decides
    canonical: list  # messages with media replaced by hashes, for the cache key
    tier: str
    task: str
    task_reason: str
    mode: str
    stream: bool
    use_cache: bool
    question: str
    pinned: bool  # the client named the tier


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None


def limits_of(cfg: Config) -> MediaLimits:
    g = cfg.gateway
    return MediaLimits(max_image_bytes=g.max_image_size, max_video_bytes=g.max_video_size,
                       max_attachments=g.max_attachments)


def prepare(body: Any, cfg: Config, limits: MediaLimits) -> ChatRequest:
    """Check everything about a request before any machine is touched."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_body")
    opts = body.get("tiergate") or {}
    if not isinstance(opts, dict):
        raise BadRequest("`tiergate` must be an object like {\"mode\": \"speed\"}", param="tiergate")
    unknown = set(opts) - {"mode", "task", "cache"}
    if unknown:
        raise BadRequest(f"unknown tiergate option(s): {', '.join(sorted(unknown))}", param="tiergate")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false", param="stream")
    parsed = parse_messages(body.get("messages"), limits)
    mode = opts.get("mode") or cfg.routing.default_mode
    if mode not in routing.MODES:
        raise BadRequest(f"unknown mode {mode!r}; use one of {', '.join(routing.MODES)}", param="tiergate.mode")
    task, reason = routing.explain(parsed, cfg.routing.long_video_seconds)
    if opts.get("task"):
        if opts["task"] not in routing.TASKS:
            raise BadRequest(f"unknown task {opts['task']!r}; use one of {', '.join(routing.TASKS)}", param="tiergate.task")
        task, reason = opts["task"], "chosen by the client"
    model = body.get("model") or "auto"
    if model == "auto":
        routes = {t: r.model_dump() for t, r in cfg.routing.tasks.items()}
        tier = routing.pick_tier(routes or {"caption": dict.fromkeys(routing.MODES, next(iter(cfg.tiers)))}, task, mode)
    elif model in cfg.tiers:
        tier = model
    else:
        raise NotFound(f"unknown model {model!r}; use 'auto' or a tier: {', '.join(cfg.tiers)}", param="model",
                       code="model_not_found")
    use_cache = opts.get("cache", True)
    if not isinstance(use_cache, bool):
        raise BadRequest("`tiergate.cache` must be true or false", param="tiergate.cache")
    forward = {k: v for k, v in body.items() if k not in _OWN_FIELDS}
    return ChatRequest(
        body=forward, canonical=parsed.canonical, tier=tier, task=task, task_reason=reason, mode=mode,
        stream=stream, use_cache=use_cache and cfg.cache.enabled, question=(parsed.last_user or parsed.text)[-500:],
        pinned=model != "auto",
    )
