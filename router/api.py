"""The HTTP surface: OpenAI-compatible chat, tier status and control, health, metrics.

Routes are thin: they parse, call the Gateway, and turn `TiergateError`s into
OpenAI-style JSON in one handler, so every failure looks the same to a client.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from . import request as request_parsing
from .config import Config
from .errors import BadRequest, NotFound, PayloadTooLarge, TiergateError, Unauthorized
from .gateway import Gateway

log = logging.getLogger("tiergate.api")


class _Stream(StreamingResponse):
    """Closes its iterator however the response ends, so a client hanging up mid-stream
    releases the lease and the single-flight slot at once, not whenever GC gets to it."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def _error(exc: TiergateError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _bearer(request: Request, env: str, what: str) -> None:
    """Constant-time check of `Authorization: Bearer $ENV`; an unset token disables the route."""
    expected = os.environ.get(env, "")
    if not expected:
        raise Unauthorized(f"{what} is disabled: set {env} on the gateway")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        raise Unauthorized(f"{what} needs 'Authorization: Bearer ${env}'")


def create_app(cfg: Config, gateway: Gateway | None = None) -> FastAPI:
    gw = gateway or Gateway(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.start()
        try:
            yield
        finally:
            await gw.aclose()

    app = FastAPI(title="tiergate", version="0.1.0", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)
    app.state.gateway = gw

    @app.exception_handler(TiergateError)
    async def _tiergate_error(request: Request, exc: TiergateError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(BadRequest(f"invalid request: {exc.errors()[0].get('msg', 'bad input')}"))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        limit = gw.cfg.gateway.max_body_size
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body is {int(declared) / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB limit")
        raw = await request.body()
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body is over the {limit / 2**20:.0f} MiB limit")
        body = await request_parsing.parse_json_async(raw)  # 400 for bad JSON and for absurd nesting
        req = await gw.prepare_async(body, len(raw))
        answer = await gw.answer(req)
        headers = answer.meta.headers()
        if answer.chunks is not None:
            headers.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
            return _Stream(answer.chunks, media_type="text/event-stream", headers=headers)
        return Response(json.dumps(answer.response), media_type="application/json", headers=headers)

    @app.get("/v1/models")
    async def models() -> dict:
        data = [{"id": "auto", "object": "model", "owned_by": "tiergate", "description": "routed by task and mode"}]
        data += [
            {"id": name, "object": "model", "owned_by": "tiergate", "gpu": t.gpu, "model": t.model}
            for name, t in gw.cfg.tiers.items()
        ]
        return {"object": "list", "data": data}

    @app.get("/api/tiers")
    async def tiers() -> dict:
        return {"tiers": await gw.tiers_status()}

    @app.post("/api/tiers/{name}/{action}")
    async def tier_action(name: str, action: str, request: Request) -> dict:
        """Admin start or stop of a tier (start returns while the boot goes on)."""
        _bearer(request, "TIERGATE_ADMIN_TOKEN", "the admin API")
        _known(name)
        actor = f"admin API from {request.client.host if request.client else '?'}"
        if action == "start":
            await gw.lifecycle.admin_start(name, actor=actor)
        elif action == "stop":
            await gw.lifecycle.admin_stop(name, actor=actor)
        else:
            raise NotFound(f"no action {action!r} for a tier; use start or stop")
        return {"tier": name, "state": (await gw.state.tier(name)).state}

    @app.post("/api/instances/{instance_id}/ready")
    async def instance_ready(instance_id: str, request: Request) -> dict:
        _bearer(request, "TIERGATE_CALLBACK_TOKEN", "the ready callback")
        if not await gw.lifecycle.instance_ready(instance_id):
            raise NotFound(f"no instance {instance_id!r} in the config")
        return {"instance": instance_id, "ok": True}

    @app.get("/api/events")
    async def events(request: Request, count: int = 100) -> dict:
        _bearer(request, "TIERGATE_ADMIN_TOKEN", "the admin API")
        return {"events": await gw.state.events(min(max(count, 1), 1000))}

    @app.get("/api/config")
    async def get_config(request: Request) -> Response:
        _bearer(request, "TIERGATE_ADMIN_TOKEN", "the admin API")
        return Response(await gw.config_text(), media_type="application/toml")

    @app.put("/api/config")
    async def put_config(request: Request) -> dict:
        """Validate, save atomically (keeping a backup) and hot-reload; nothing is written on errors."""
        _bearer(request, "TIERGATE_ADMIN_TOKEN", "the admin API")
        text = (await request.body()).decode("utf-8", errors="replace")
        problems = await gw.save_config(text)
        if problems:
            raise BadRequest("the config has problems; nothing was saved:\n" + "\n".join(problems), code="invalid_config")
        return {"ok": True, "path": gw.cfg.path, "tiers": list(gw.cfg.tiers)}

    @app.get("/healthz")
    async def healthz() -> Response:
        try:
            await gw.state.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means we cannot serve
            return JSONResponse({"ok": False, "error": f"redis: {exc}"}, status_code=503)
        return JSONResponse({"ok": True})

    @app.get("/metrics")
    async def metrics() -> Response:
        body = gw.metrics.render(await gw.tiers_status())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    def _known(name: str) -> None:
        if name not in gw.cfg.tiers:
            raise NotFound(f"no tier {name!r}; tiers: {', '.join(gw.cfg.tiers)}")

    return app
