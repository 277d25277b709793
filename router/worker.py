"""Stand-in GPU worker: a fake OpenAI-compatible model server for demos and tests.

It behaves like a vLLM machine serving Qwen3-VL from the gateway's point of view
(port closed while "loading the model", `/health`, `/v1/models`,
`/v1/chat/completions` with streaming and paced tokens, optional readiness
callback) but needs no GPU.  Its answers are deterministic and say plainly that
they are simulated, while describing real properties of the input (text, image
sizes, video sizes), so a demo shows that requests really travelled end to end.

Run it with `tiergate worker --port 8001` or `python -m router.worker --port 8001`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import json
import math
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_MODEL = "Qwen/Qwen3-VL-4B-Instruct"
CALLBACK_TOKEN_ENV = "TIERGATE_CALLBACK_TOKEN"
FAIL_BOOT_EXIT_CODE = 3
# How long in-flight streams may keep running after SIGTERM before being cut.
GRACEFUL_SHUTDOWN_SECONDS = 3.0
# Ready-callback retries: a real machine keeps trying while the gateway restarts.
READY_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
QUOTE_MAX_CHARS = 60
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def _log(message: str) -> None:
    """Print one status line to stderr (stdout stays free for other tools)."""
    print(f"tiergate worker: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `tiergate worker` flags to `parser` (shared by the CLI and `-m`)."""
    parser.add_argument(
        "--port",
        metavar="N",
        type=int,
        required=True,
        help="TCP port to serve the OpenAI-compatible API on (0 picks a free port and prints it).",
    )
    parser.add_argument(
        "--host",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="Address to listen on (default: %(default)s, only this machine).",
    )
    parser.add_argument(
        "--boot-seconds",
        metavar="S",
        type=float,
        default=0.0,
        help="Pretend to load the model for this many seconds before opening the "
        "port, like vLLM does; clients see 'connection refused' meanwhile "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        default=DEFAULT_MODEL,
        help="Model name to report in /v1/models and in answers (default: %(default)s).",
    )
    parser.add_argument(
        "--tokens-per-second",
        metavar="R",
        type=float,
        default=50.0,
        help="Simulated generation speed per request; 0 means as fast as possible (default: %(default)s).",
    )
    parser.add_argument(
        "--ready-url",
        metavar="URL",
        default=None,
        help="Full URL to POST once the port is open, announcing readiness the way a "
        "GPU machine calls the gateway's /api/instances/{id}/ready. Sent with "
        f"'Authorization: Bearer ${CALLBACK_TOKEN_ENV}'.",
    )
    parser.add_argument(
        "--instance-id",
        metavar="ID",
        default=None,
        help="Instance id to include in the readiness callback body and in logs.",
    )
    parser.add_argument(
        "--stop-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="After SIGTERM, take this long to exit, like a model server releasing GPU memory "
        "(the gateway shows the tier as 'stopping' meanwhile).",
    )
    parser.add_argument(
        "--fail-boot",
        action="store_true",
        help=f"Simulate a model that fails to load: wait --boot-seconds, print an "
        f"error and exit with code {FAIL_BOOT_EXIT_CODE} without opening the port.",
    )


# ------------------------------------------------------------ request analysis


class BadRequest(Exception):
    """A client error that becomes an OpenAI-style 400 answer."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass
class Conversation:
    """What the worker learned from the messages; enough to write the answer."""

    question: str
    n_messages: int
    n_user: int
    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    fingerprint: str = ""


@dataclass
class _Media:
    """A media part awaiting description (kept separate so decoding can run off-loop)."""

    kind: str  # "image" or "video"
    url: str


def _parse_data_url(url: str) -> tuple[str, bytes] | None:
    """Split a base64 `data:` URL into (mime type, bytes); None if not decodable."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    mime = header[len("data:") : -len(";base64")].split(";")[0].strip().lower()
    try:
        return mime, base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        return None


def _describe_image(url: str) -> tuple[str, int]:
    """Describe one image and estimate its prompt tokens.

    Only the header is read (PIL opens lazily), so this stays cheap.
    Qwen3-VL spends about one token per 32x32 pixel block.
    """
    if not url.startswith("data:"):
        return "an image by URL", 256
    parsed = _parse_data_url(url)
    if parsed is None:
        return "an undecodable image data URL", 0
    _, data = parsed
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            fmt = image.format or "unknown format"
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return f"an unreadable image ({len(data)} bytes)", 0
    tokens = max(4, math.ceil(width / 32) * math.ceil(height / 32))
    return f"{width}x{height} {fmt}", tokens


def _describe_video(url: str) -> tuple[str, int]:
    """Describe one video: container, byte size and, when PyAV can read it, duration."""
    if not url.startswith("data:"):
        return "a video by URL", 1024
    parsed = _parse_data_url(url)
    if parsed is None:
        return "an undecodable video data URL", 0
    mime, data = parsed
    kind = mime.split("/")[-1].upper() if "/" in mime else "video"
    details = [kind, f"{len(data)} bytes"]
    with contextlib.suppress(Exception):  # any PyAV failure only means "no duration"
        import av

        with av.open(io.BytesIO(data)) as container:
            if container.duration is not None:
                details.append(f"{container.duration / 1_000_000:.1f} s")
            if container.streams.video:
                stream = container.streams.video[0]
                details.append(f"{stream.width}x{stream.height}")
    return ", ".join(details), 1024


def _text_of(content: Any, where: str, media: list[_Media]) -> str:
    """Return the text of one message's content, collecting media parts on the way."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts", "invalid_messages", "messages")
    texts: list[str] = []
    for index, part in enumerate(content):
        here = f"{where}.content[{index}]"
        if not isinstance(part, dict):
            raise BadRequest(f"{here} must be an object", "invalid_messages", "messages")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"{here}.text must be a string", "invalid_messages", "messages")
            texts.append(text)
        elif kind in ("image_url", "video_url"):
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else None
            if not isinstance(url, str) or not url:
                raise BadRequest(f"{here}.{kind}.url must be a non-empty string", "invalid_messages", "messages")
            media.append(_Media("image" if kind == "image_url" else "video", url))
        else:
            raise BadRequest(f"{here} has unsupported type {kind!r}", "invalid_messages", "messages")
    return " ".join(texts)


def parse_messages(messages: Any) -> tuple[list[tuple[str, str]], list[_Media]]:
    """Validate `messages` and return ((role, text) pairs, media parts), cheaply."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "missing_messages", "messages")
    turns: list[tuple[str, str]] = []
    media: list[_Media] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object", "invalid_messages", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role must be one of {sorted(ROLES)}", "invalid_messages", "messages")
        turns.append((role, _text_of(message.get("content"), where, media)))
    return turns, media


def analyse(messages: list[Any], turns: list[tuple[str, str]], media: list[_Media]) -> Conversation:
    """Build the Conversation summary; decodes media headers, so may take a few ms."""
    user_texts = [text for role, text in turns if role == "user"]
    conversation = Conversation(
        question=user_texts[-1] if user_texts else "",
        n_messages=len(turns),
        n_user=len(user_texts),
    )
    tokens = sum(4 + len(text.split()) for _, text in turns)
    for item in media:
        describe = _describe_image if item.kind == "image" else _describe_video
        description, media_tokens = describe(item.url)
        (conversation.images if item.kind == "image" else conversation.videos).append(description)
        tokens += media_tokens
    conversation.prompt_tokens = tokens
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    conversation.fingerprint = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return conversation


# --------------------------------------------------------------- answer text

# Word lists for the fingerprint sentence (16/16/8/8 entries, indexed by hash bytes).
# fmt: off
_ADJECTIVES = (
    "amber", "quiet", "distant", "silver", "patient", "crooked", "bright", "hollow",
    "gentle", "narrow", "restless", "ancient", "velvet", "frosty", "golden", "humble",
)
_NOUNS = (
    "lighthouse", "orchard", "river", "lantern", "meadow", "compass", "harbor", "violin",
    "glacier", "library", "windmill", "garden", "bridge", "comet", "forest", "teapot",
)
_VERBS = ("hums", "waits", "drifts", "glows", "listens", "wanders", "rests", "sings")
_ADVERBS = ("softly", "calmly", "slowly", "brightly", "idly", "warmly", "lazily", "steadily")
# fmt: on


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _media_phrase(descriptions: list[str], word: str) -> str:
    """E.g. '1 image (640x480 PNG)' or '0 videos'."""
    phrase = _plural(len(descriptions), word)
    return f"{phrase} ({'; '.join(descriptions)})" if descriptions else phrase


def _quote(text: str) -> str:
    """One-line, shortened rendering of the user's question."""
    flat = " ".join(text.split())
    return flat if len(flat) <= QUOTE_MAX_CHARS else flat[: QUOTE_MAX_CHARS - 3].rstrip() + "..."


def compose_answer(conversation: Conversation, model: str) -> str:
    """The deterministic reply text: same conversation and model, same bytes."""
    digest = bytes.fromhex(conversation.fingerprint)
    sentence = (
        f"the {_ADJECTIVES[digest[0] % 16]} {_NOUNS[digest[1] % 16]} {_VERBS[digest[2] % 8]} "
        f"{_ADVERBS[digest[3] % 8]} beside the {_ADJECTIVES[digest[4] % 16]} {_NOUNS[digest[5] % 16]}."
    )
    question = _quote(conversation.question)
    asked = f"You asked: '{question}'." if question else "You sent no text."
    return (
        f"[simulated worker, model {model}, no GPU] {asked} "
        f"I received {_media_phrase(conversation.images, 'image')} and "
        f"{_media_phrase(conversation.videos, 'video')} in a conversation of "
        f"{_plural(conversation.n_messages, 'message')} ({conversation.n_user} from the user). "
        f"This is a canned reply, not real model output; reply fingerprint "
        f"{conversation.fingerprint[:8]}: {sentence}"
    )


def tokenize(text: str) -> list[str]:
    """Split into word 'tokens' that keep their leading whitespace, so they re-join exactly."""
    return re.findall(r"\s*\S+", text)


# ------------------------------------------------------------------- the app


def _error(
    status: int, message: str, code: str, param: str | None = None, kind: str = "invalid_request_error"
) -> JSONResponse:
    """OpenAI-style error body, the shape clients and the gateway already parse."""
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return JSONResponse(body, status_code=status)


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"'{name}' must be a positive integer", "invalid_parameter", name)
    return value


class Worker:
    """Holds the worker settings and serves the HTTP endpoints."""

    def __init__(self, model: str, tokens_per_second: float) -> None:
        self.model = model
        self.token_delay = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
        self.started = int(time.time())
        # Set by the runner; lets streams end promptly on SIGTERM instead of being
        # cancelled by uvicorn after its graceful-shutdown timeout.
        self.shutting_down: Callable[[], bool] = lambda: False

    def app(self) -> Starlette:
        """Build the Starlette application (plain routes, no middleware: kept fast)."""
        return Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ],
            exception_handlers={HTTPException: self.http_error},
        )

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
        """Liveness for the gateway's poller; like vLLM, 200 with an empty body, plus who we are."""
        return Response(status_code=200, headers={"x-tiergate-instance": os.environ.get("TIERGATE_INSTANCE_ID", "")})

    async def models(self, request: Request) -> Response:
        """OpenAI model list, so clients can discover the served name."""
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": self.started,
                        "owned_by": "tiergate-simulated-worker",
                    }
                ],
            }
        )

    async def chat(self, request: Request) -> Response:
        """OpenAI chat completions; any requested model name is answered by ours."""
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"Request body is not valid JSON: {exc}", "invalid_json")
        if not isinstance(body, dict):
            return _error(400, "Request body must be a JSON object", "invalid_json")
        try:
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise BadRequest("'stream' must be a boolean", "invalid_parameter", "stream")
            if body.get("n", 1) != 1:
                raise BadRequest("The simulated worker only supports n=1", "invalid_parameter", "n")
            max_tokens = _positive_int(body, "max_tokens")
            limit = _positive_int(body, "max_completion_tokens") or max_tokens
            options = body.get("stream_options") or {}
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            turns, media = parse_messages(body.get("messages"))
        except BadRequest as exc:
            return _error(400, exc.message, exc.code, exc.param)

        messages = body["messages"]
        if media:  # base64 + header decoding can take milliseconds: keep the loop free
            conversation = await run_in_threadpool(analyse, messages, turns, media)
        else:
            conversation = analyse(messages, turns, media)
        tokens = tokenize(compose_answer(conversation, self.model))
        finish = "stop"
        if limit is not None and len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        usage = {
            "prompt_tokens": conversation.prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": conversation.prompt_tokens + len(tokens),
        }
        envelope = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model}
        if stream:
            return StreamingResponse(
                self._stream(envelope, tokens, finish, usage if include_usage else None),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        if self.token_delay:
            await asyncio.sleep(self.token_delay * len(tokens))
        return JSONResponse(
            {
                **envelope,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        )

    async def _stream(
        self, envelope: dict[str, Any], tokens: list[str], finish: str, usage: dict[str, int] | None
    ) -> AsyncIterator[str]:
        """SSE chunks paced against a fixed schedule, so the rate does not drift."""

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            chunk = {**envelope, "object": "chat.completion.chunk", "choices": choices, **extra}
            return f"data: {json.dumps(chunk, ensure_ascii=False, separators=(',', ':'))}\n\n"

        def choice(delta: dict[str, str], reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]

        yield event(choice({"role": "assistant", "content": ""}))
        start = time.monotonic()
        for index, token in enumerate(tokens):
            if self.token_delay:
                wait = start + (index + 1) * self.token_delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if self.shutting_down():  # like a machine going away: the stream just ends
                return
            yield event(choice({"content": token}))
        yield event(choice({}, finish))
        if usage is not None:
            yield event([], usage=usage)
        yield "data: [DONE]\n\n"


# ------------------------------------------------------------------ lifecycle


class _Stop:
    """Turns SIGTERM/SIGINT into an asyncio event, during boot and while serving."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.signal: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.event.set)

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a stop signal arrived meanwhile."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout=max(seconds, 0.0))
        except TimeoutError:
            return False
        return True


def _bind(host: str, port: int) -> socket.socket:
    """Open the listening socket ourselves, so the port opens exactly after boot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    # asyncio only sets TCP_NODELAY on sockets whose proto is IPPROTO_TCP, which a socket
    # from create_server() is not; without it, Nagle and delayed ACKs add ~40 ms to every
    # answer (vLLM, bound by uvicorn itself, does not have that delay). Accepted sockets inherit it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


async def announce_ready(url: str, instance_id: str | None, model: str, port: int) -> bool:
    """POST the readiness callback, retrying transient failures; True on a 2xx answer."""
    headers: dict[str, str] = {}
    token = os.environ.get(CALLBACK_TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    else:
        _log(f"warning: {CALLBACK_TOKEN_ENV} is not set; ready callback sent without Authorization")
    body = {"instance_id": instance_id, "model": model, "port": port}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for attempt, delay in enumerate((*READY_RETRY_DELAYS, None), start=1):
            try:
                answer = await client.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if answer.is_success:
                    _log(f"ready callback accepted by {url} (HTTP {answer.status_code})")
                    return True
                problem = f"HTTP {answer.status_code}"
                if answer.status_code < 500:  # the gateway said no; retrying won't help
                    delay = None
            _log(f"ready callback to {url} failed (attempt {attempt}): {problem}")
            if delay is None:
                return False
            await asyncio.sleep(delay)
    return False


async def _main(args: argparse.Namespace) -> int:
    """Boot delay, then serve; see `run`."""
    stop = _Stop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop.handle)
    label = f"instance {args.instance_id}, " if args.instance_id else ""

    _log(f"loading model {args.model} ({label}simulated, {args.boot_seconds:g} s)")
    if await stop.sleep(args.boot_seconds):
        _log("stopped during boot")
        return 0
    if args.fail_boot:
        _log(f"error: failed to load model {args.model}: simulated boot failure (--fail-boot)")
        return FAIL_BOOT_EXIT_CODE

    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        _log(f"error: cannot listen on {args.host}:{args.port}: {exc}")
        return 1
    port = sock.getsockname()[1]
    worker = Worker(args.model, args.tokens_per_second)
    config = uvicorn.Config(
        worker.app(),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = uvicorn.Server(config)
    worker.shutting_down = lambda: server.should_exit
    serving = asyncio.create_task(server.serve(sockets=[sock]))

    async def after_start() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        _log(f"listening on http://{args.host}:{port} (model {args.model}, {label}simulated, no GPU)")
        if args.ready_url:
            await announce_ready(args.ready_url, args.instance_id, args.model, port)

    async def stop_server() -> None:  # covers a signal landing before uvicorn's own handlers
        await stop.event.wait()
        server.should_exit = True

    helpers = [asyncio.create_task(after_start()), asyncio.create_task(stop_server())]
    try:
        await serving
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        sock.close()
    # uvicorn re-raises the signal it caught after restoring our handler, so
    # stop.signal tells a requested shutdown from an unexpected one.
    if stop.signal is None:
        _log("error: server stopped unexpectedly")
        return 1
    if args.stop_seconds:
        _log(f"releasing the model ({args.stop_seconds:g} s)")
        await asyncio.sleep(args.stop_seconds)
    _log("stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    """Boot, serve until SIGTERM/SIGINT, and return the process exit code (0 = clean)."""
    return asyncio.run(_main(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m router.worker`."""
    parser = argparse.ArgumentParser(
        prog="python -m router.worker",
        description="Simulated GPU worker: an OpenAI-compatible chat server that "
        "needs no GPU, for tiergate demos and tests.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
