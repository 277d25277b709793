"""The worker's HTTP routes: `/health`, `/v1/models`, `/v1/chat/completions`, as vLLM answers them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.errors import BadRequest as MessagesError
from router.messages import walk

from .answer import analyse, compose_answer, tokenize

IDENTITY_HEADER = "x-tiergate-instance"
MAX_N = 128  # vLLM has no fixed cap; this one keeps a stand-in from being asked for a million answers


class BadRequest(Exception):
    """A client error that becomes an OpenAI-style 400 answer."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def _error(
    status: int, message: str, code: str, param: str | None = None, kind: str = "invalid_request_error"
) -> JSONResponse:
    """OpenAI-style error body, the shape clients and the gateway already parse."""
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return JSONResponse(body, status_code=status)


def _int(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        limit = f">= {low}" if high is None else f"from {low} to {high}"
        raise BadRequest(f"'{name}' must be an integer {limit}", "invalid_parameter", name)
    return value


def with_identity(app: ASGIApp, instance_id: str) -> ASGIApp:
    """Every response, errors included, says which instance answered (`x-tiergate-instance`).

    A gateway checks it before taking a server on its port for the worker it started.
    """
    header = (IDENTITY_HEADER.encode(), instance_id.encode("latin-1", "replace"))

    async def identified(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_with_identity(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await app(scope, receive, send_with_identity)

    return identified


class Worker:
    """Holds the worker settings and serves the HTTP endpoints."""

    def __init__(self, model: str, tokens_per_second: float, instance_id: str = "") -> None:
        self.model = model
        self.instance_id = instance_id
        self.token_delay = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
        self.started = int(time.time())
        # Set by the runner; lets streams end promptly on SIGTERM instead of being
        # cancelled by uvicorn after its graceful-shutdown timeout.
        self.shutting_down: Callable[[], bool] = lambda: False

    def app(self) -> ASGIApp:
        """The ASGI application (plain routes, one header-adding wrapper: kept fast)."""
        routes = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ],
            exception_handlers={HTTPException: self.http_error},
        )
        return with_identity(routes, self.instance_id)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """404/405 and friends as OpenAI-style JSON instead of plain text."""
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        answer = _error(
            exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", str(exc.status_code), kind=kind
        )
        answer.headers.update(exc.headers or {})  # e.g. Allow on 405
        return answer

    async def health(self, request: Request) -> Response:
        """Liveness for the gateway's poller; like vLLM, 200 with an empty body."""
        return Response(status_code=200)

    async def models(self, request: Request) -> Response:
        """OpenAI model list, so clients can discover the served name."""
        return JSONResponse({
            "object": "list",
            "data": [{"id": self.model, "object": "model", "created": self.started,
                      "owned_by": "tiergate-simulated-worker"}],
        })

    async def chat(self, request: Request) -> Response:
        """OpenAI chat completions; any requested model name is answered by ours."""
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return _error(400, f"Request body is not valid JSON: {exc}", "invalid_json")
        if not isinstance(body, dict):
            return _error(400, "Request body must be a JSON object", "invalid_json")
        try:
            stream = body.get("stream") or False
            if not isinstance(stream, bool):
                raise BadRequest("'stream' must be a boolean", "invalid_parameter", "stream")
            n = _int(body, "n", 1, MAX_N) or 1
            max_tokens = _int(body, "max_tokens", 1)
            limit = _int(body, "max_completion_tokens", 1) or max_tokens
            options = body.get("stream_options")
            if options is not None and not stream:
                raise BadRequest("Stream options can only be defined when `stream=True`.", "invalid_parameter",
                                 "stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            turns = walk(body.get("messages"))
        except BadRequest as exc:
            return _error(400, exc.message, exc.code, exc.param)
        except MessagesError as exc:
            return _error(400, exc.message, "invalid_messages", exc.param)

        messages = body["messages"]
        if any(turn.media for turn in turns):  # base64 + header decoding can take milliseconds: keep the loop free
            conversation = await run_in_threadpool(analyse, messages, turns)
        else:
            conversation = analyse(messages, turns)
        answers: list[tuple[list[str], str]] = []
        for sample in range(n):
            tokens = tokenize(compose_answer(conversation, self.model, sample))
            finish = "stop"
            if limit is not None and len(tokens) > limit:
                tokens, finish = tokens[:limit], "length"
            answers.append((tokens, finish))
        completion_tokens = sum(len(tokens) for tokens, _ in answers)
        usage = {
            "prompt_tokens": conversation.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": conversation.prompt_tokens + completion_tokens,
        }
        envelope = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model}
        if stream:
            return StreamingResponse(
                self._stream(envelope, answers, usage if include_usage else None),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        if self.token_delay:  # samples are generated side by side: the longest one sets the pace
            await asyncio.sleep(self.token_delay * max(len(tokens) for tokens, _ in answers))
        return JSONResponse({
            **envelope,
            "object": "chat.completion",
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": "".join(tokens)}, "logprobs": None,
                 "finish_reason": finish}
                for i, (tokens, finish) in enumerate(answers)
            ],
            "usage": usage,
        })

    async def _stream(
        self, envelope: dict[str, Any], answers: list[tuple[list[str], str]], usage: dict[str, int] | None
    ) -> AsyncIterator[str]:
        """SSE chunks paced against a fixed schedule, so the rate does not drift.

        Like vLLM with `n > 1`, the samples' chunks are interleaved, each with its `index`.
        """

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            chunk = {**envelope, "object": "chat.completion.chunk", "choices": choices, **extra}
            return f"data: {json.dumps(chunk, ensure_ascii=False, separators=(',', ':'))}\n\n"

        def choice(index: int, delta: dict[str, str], reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}]

        for i in range(len(answers)):
            yield event(choice(i, {"role": "assistant", "content": ""}))
        start = time.monotonic()
        longest = max(len(tokens) for tokens, _ in answers)
        for step in range(longest):
            if self.token_delay:
                wait = start + (step + 1) * self.token_delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if self.shutting_down():  # like a machine going away: the stream just ends
                return
            for i, (tokens, finish) in enumerate(answers):
                if step < len(tokens):
                    yield event(choice(i, {"content": tokens[step]}))
                if step == len(tokens) - 1:
                    yield event(choice(i, {}, finish))
        if usage is not None:
            yield event([], usage=usage)
        yield "data: [DONE]\n\n"
