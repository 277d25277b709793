"""The HTTP surface: OpenAI-compatible chat, tier status and control, health, metrics.

Routes are thin: they parse, call the `Gateway` facade, and turn errors into OpenAI-style
JSON in one place, so every failure looks the same to a client. `Front` is the outermost
ASGI app: it asks `access.Access` who may call, then sends the chat route (the hot path)
straight to its handler and everything else to FastAPI, whose per-request machinery
(telemetry hooks, dependency injection, middleware) showed in the warm path's profile.
The chat handler reads the body chunk by chunk, so a body over `max_body_size` is refused
as soon as it is, however it is sent.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .access import Access, token_ok
from .auth import Throttled
from .errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    StateUnavailable,
    TiergateError,
    TooManyAttempts,
    Unauthorized,
)
from .gateway import Gateway
from .proxy import POOL_CLIENT, POOL_TOKEN
from .request import parse_json_async

log = logging.getLogger("tiergate.api")


class _Stream:
    """An SSE answer written straight to the server, closed however it ends.

    A client that hangs up cancels the pump at once, so the lease and the single-flight slot
    are released then, not when the worker next sends. This is Starlette's StreamingResponse
    without its per-response anyio task group, which showed in the first token's profile.
    """

    def __init__(self, chunks: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        self.chunks = chunks
        self.headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        hang_up = asyncio.ensure_future(_hang_up(receive))
        try:
            await asyncio.wait((pump, hang_up), return_when=asyncio.FIRST_COMPLETED)
        finally:
            hang_up.cancel()
            pump.cancel()  # a no-op once it has finished
            await asyncio.wait((pump, hang_up))
            await self.chunks.aclose()  # type: ignore[attr-defined]
        if not pump.cancelled() and (exc := pump.exception()) is not None and not isinstance(exc, OSError):
            raise exc  # a hang-up (OSError on send) is not an error of ours

    async def _pump(self, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _hang_up(receive: Any) -> None:
    """Returns when the client goes (the request body was read before the answer started)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def error_response(exc: TiergateError) -> Response:
    return Response(orjson.dumps(exc.body()), status_code=exc.status, headers=exc.headers,
                    media_type="application/json")


def _state_down(exc: Exception) -> Response:
    log.warning("shared state unreachable: %s", exc)
    return error_response(StateUnavailable("the gateway's shared state (Redis) is unreachable; retry in a few seconds",
                                           headers={"Retry-After": "2"}))


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 the moment it passes `limit` (declared or chunked alike)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {int(declared) / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit / 2**20:.0f} MiB limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _asker(request: Request, body: dict) -> str:
    """Who asks: the credential (API key, UI login), else OpenAI's `user` field; '' when unknown."""
    who = request.scope.get("tiergate.asker", "")
    user = body.get("user") if isinstance(body, dict) else None
    return who or (f"user:{user[:64]}" if isinstance(user, str) and user else "")


def is_admin(request: Request) -> bool:
    expected = os.environ.get("TIERGATE_ADMIN_TOKEN", "")
    given = request.headers.get("authorization", "")
    return bool(expected) and hmac.compare_digest(given.encode(), f"Bearer {expected}".encode())


async def bearer(gw: Gateway, request: Request, env: str, what: str) -> None:
    """`Authorization: Bearer $ENV`, compared in constant time, guesses throttled like failed logins."""
    if not os.environ.get(env, ""):
        raise Unauthorized(f"{what} is disabled: set {env} on the gateway")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    try:
        ok = await token_ok(gw.logins, request.client.host if request.client else "", env, given)
    except Throttled as exc:
        raise TooManyAttempts(f"too many wrong tokens from here; try again in {exc.retry_after} s",
                              headers={"Retry-After": str(exc.retry_after)}) from None
    if not ok:
        raise Unauthorized(f"{what} needs 'Authorization: Bearer ${env}'")


CHAT = "/v1/chat/completions"


class Front:
    """The app uvicorn runs: access first, then the chat hot path or FastAPI (`api`, where front-ends mount)."""

    def __init__(self, gw: Gateway, api: FastAPI, pool_token: str = "") -> None:
        self.gw = gw
        self.api = api
        self.access = Access(gw, api)
        self.pool_token = pool_token.encode()

    @property
    def state(self) -> object:
        return self.api.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)  # lifespan
            return
        if self.pool_token:
            scope = _from_pool(scope, self.pool_token)
        try:
            who = await self.access.admit(scope)
        except Throttled as exc:
            await self.access.refuse(send, exc.retry_after)
            return
        if who is None:
            await self.access.refuse(send)
            return
        if who:
            scope["tiergate.asker"] = who
        if scope["path"] == CHAT and scope["method"] == "POST":
            response = await self.chat(Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.api(scope, receive, send)

    async def chat(self, request: Request) -> Response | _Stream:
        """POST /v1/chat/completions."""
        gw = self.gw
        try:
            raw = await read_body(request, gw.cfg.gateway.max_body_size)
            body = await parse_json_async(raw)  # 400 for bad JSON and for absurd nesting
            req = await gw.prepare_async(body, len(raw))
            answer = await gw.answer(req, asker=_asker(request, body))
        except TiergateError as exc:
            return error_response(exc)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            return _state_down(exc)
        headers = answer.meta.headers()
        if answer.chunks is not None:
            headers.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
            return _Stream(answer.chunks, headers)
        return Response(orjson.dumps(answer.response), media_type="application/json", headers=headers)


def _from_pool(scope: dict, token: bytes) -> dict:
    """In a pool's UI process: take the client address another gateway process passed on, if its token is right."""
    headers = scope.get("headers") or []
    given = dict(headers)
    scope["headers"] = [(k, v) for k, v in headers if k not in (POOL_TOKEN, POOL_CLIENT)]
    if given.get(POOL_TOKEN) == token:
        scope["client"] = (given.get(POOL_CLIENT, b"").decode(), 0)
    return scope


def create_app(gw: Gateway, pool_token: str = "") -> Front:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.start()
        try:
            yield
        finally:
            await gw.aclose()

    app = FastAPI(title="tiergate", version="0.2.0", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)
    app.state.gateway = gw

    @app.exception_handler(TiergateError)
    async def _tiergate_error(request: Request, exc: TiergateError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(BadRequest(f"invalid request: {exc.errors()[0].get('msg', 'bad input')}"))

    for kind in (RedisConnectionError, RedisTimeoutError):
        app.add_exception_handler(kind, lambda request, exc: _state_down(exc))

    @app.get("/v1/models")
    async def models() -> dict:
        data = [{"id": "auto", "object": "model", "owned_by": "tiergate", "description": "routed by task and mode"}]
        data += [
            {"id": name, "object": "model", "owned_by": "tiergate", "gpu": t.gpu, "model": t.model}
            for name, t in gw.cfg.tiers.items()
        ]
        return {"object": "list", "data": data}

    @app.get("/api/tiers")
    async def tiers(request: Request) -> dict:
        """Every tier; workers' addresses only for the admin token (they are internal)."""
        rows = await gw.status()
        if not is_admin(request):
            for row in rows:
                for inst in row["instances"]:
                    inst["url"] = ""
        return {"tiers": rows}

    @app.post("/api/tiers/{name}/{action}")
    async def tier_action(name: str, action: str, request: Request) -> dict:
        """Admin start or stop of a tier (start returns `starting` while the boot goes on)."""
        await bearer(gw, request, "TIERGATE_ADMIN_TOKEN", "the admin API")
        actor = f"admin API from {request.client.host if request.client else '?'}"
        if action == "start":
            state = await gw.start_tier(name, actor=actor)
        elif action == "stop":
            state = await gw.stop_tier(name, actor=actor)
        else:
            raise NotFound(f"no action {action!r} for a tier; use start or stop")
        return {"tier": name, "state": state}

    @app.post("/api/instances/{instance_id}/ready")
    async def instance_ready(instance_id: str, request: Request) -> dict:
        await bearer(gw, request, "TIERGATE_CALLBACK_TOKEN", "the ready callback")
        if not await gw.instance_ready(instance_id):
            raise NotFound(f"no instance {instance_id!r} in the config")
        return {"instance": instance_id, "ok": True}

    @app.get("/api/events")
    async def events(request: Request, count: int = 100) -> dict:
        await bearer(gw, request, "TIERGATE_ADMIN_TOKEN", "the admin API")
        return {"events": await gw.events(min(max(count, 1), 1000))}

    @app.get("/api/config")
    async def get_config(request: Request) -> Response:
        await bearer(gw, request, "TIERGATE_ADMIN_TOKEN", "the admin API")
        return Response(await gw.config_text(), media_type="application/toml")

    @app.put("/api/config")
    async def put_config(request: Request) -> dict:
        """Validate, save atomically (keeping a backup) and hot-reload; nothing is written on errors."""
        await bearer(gw, request, "TIERGATE_ADMIN_TOKEN", "the admin API")
        text = (await read_body(request, 1024 * 1024)).decode("utf-8", errors="replace")
        problems = await gw.save_config(text)
        if problems:
            raise BadRequest("the config has problems; nothing was saved:\n" + "\n".join(problems), code="invalid_config")
        return {"ok": True, "path": gw.cfg.path, "tiers": list(gw.cfg.tiers)}

    @app.get("/healthz")
    async def healthz() -> Response:
        problem = await gw.healthy()
        if problem:
            return JSONResponse({"ok": False, "error": problem}, status_code=503)
        return JSONResponse({"ok": True})

    @app.get("/metrics")
    async def metrics() -> Response:
        body = gw.metrics_text(await gw.status())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return Front(gw, app, pool_token)
