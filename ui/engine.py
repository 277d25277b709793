"""From a conversation in the UI to a streamed answer from the gateway.

The chat tab and the `/chat` API both go through `stream_answer`, which bridges the
gateway's `on_progress` callback (called while a tier boots) and its SSE chunks into one
async stream of `Update`s a Gradio generator can yield from. Cancelling the consumer (the
Stop button) cancels the wait or closes the stream, so the lease is released at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import mimetypes
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from router.errors import BadRequest, TiergateError
from router.gateway import Gateway, Meta, Progress
from router.sse import SSEReader

from . import format as fmt

log = logging.getLogger("tiergate.ui")

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpeg", ".wmv", ".flv")
STREAM_EVERY = 0.05  # seconds between UI updates while tokens stream; the last one always goes out
TICK = 1.0  # seconds between progress refreshes while a tier boots


@dataclass
class Update:
    kind: Literal["progress", "text", "done", "error"]
    text: str = ""  # the answer so far
    note: str = ""  # progress or error text for the user
    meta: Meta | None = None
    progress: dict[str, Any] | None = None  # for scripts: stage, elapsed, eta, position


def media_kind(path: str) -> Literal["image", "video"]:
    """Image or video by file type; anything else is a bad request, named."""
    mime = mimetypes.guess_type(path)[0] or ""
    if mime.startswith("video/") or path.lower().endswith(VIDEO_EXTS):
        return "video"
    if mime.startswith("image/"):
        return "image"
    raise BadRequest(f"{Path(path).name}: only images and videos can be attached")


def data_url(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if path.lower().endswith(".mkv"):
        mime = "video/x-matroska"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def user_content(text: str, files: list[str]) -> list[dict] | str:
    """One user turn as OpenAI content parts: media first, like the upstream demo, then the text."""
    if not files:
        return text
    parts: list[dict] = []
    for f in files:
        kind = media_kind(f)
        parts.append({"type": f"{kind}_url", f"{kind}_url": {"url": data_url(f)}})
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def build_messages(history: list[tuple[str, list[str], str]], text: str, files: list[str]) -> list[dict]:
    """The whole conversation with its images for the tier: earlier (question, files, answer) turns, then this one."""
    messages: list[dict] = []
    for q, q_files, a in history:
        messages.append({"role": "user", "content": user_content(q, q_files)})
        messages.append({"role": "assistant", "content": a})
    messages.append({"role": "user", "content": user_content(text, files)})
    return messages


def chat_body(messages: list[dict], mode: str, task: str, *, use_cache: bool = True) -> dict:
    opts: dict[str, Any] = {"mode": (mode or "").lower() or None, "cache": use_cache}
    if task and task.lower() != "auto":
        opts["task"] = task
    return {"model": "auto", "messages": messages, "stream": True,
            "tiergate": {k: v for k, v in opts.items() if v is not None}}


def body_size(body: dict) -> int:
    """Roughly the JSON size, to let big (media) bodies be decoded off the event loop."""
    total = 0
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            total += len(c)
        elif isinstance(c, list):
            for p in c:
                for v in p.values():
                    total += len(v.get("url", "")) if isinstance(v, dict) else len(str(v))
    return total


async def stream_answer(gateway: Gateway, build: Callable[[], dict]) -> AsyncIterator[Update]:
    """Prepare, wait for the tier (reporting progress), then stream the answer text.

    `build` is a zero-argument callable returning the request body; it runs in a thread,
    since reading and base64-encoding uploads can be slow. Errors end the stream with an
    `error` update; nothing is raised, so the caller's UI always keeps working.
    """
    try:
        body = await asyncio.to_thread(build)
        req = await gateway.prepare_async(body, body_size(body))
    except (TiergateError, OSError) as exc:
        yield Update("error", note=fmt.error_text(exc if isinstance(exc, TiergateError) else BadRequest(str(exc))))
        return
    except Exception as exc:  # a broken upload must not break the app
        log.exception("could not prepare a chat request")
        yield Update("error", note=fmt.error_text(exc))
        return

    t0 = time.monotonic()
    progress: asyncio.Queue[Progress] = asyncio.Queue()

    async def on_progress(p: Progress) -> None:
        progress.put_nowait(p)

    task = asyncio.create_task(gateway.answer(req, on_progress))
    chunks: AsyncIterator[bytes] | None = None
    text = ""
    try:
        last: tuple[Progress, float] | None = None
        shown = ("", 0.0)  # stage and time of the last progress update sent
        fell_back = ""  # why the routed tier was given up, kept on screen while the fallback boots
        while not task.done():
            getter = asyncio.ensure_future(progress.get())
            await asyncio.wait({task, getter}, timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                last = (getter.result(), time.monotonic())
                if last[0].stage == "fallback":
                    fell_back = _clip(last[0].message, 300)
            else:
                getter.cancel()
            if last is None or task.done() or last[0].stage == "ready":
                continue
            now = time.monotonic()
            if last[0].stage != shown[0] or now - shown[1] >= TICK * 0.9:  # once a second, or at a new stage
                shown = (last[0].stage, now)
                yield _progress_update(gateway, last[0], now - t0, now - last[1], fell_back)
        try:
            answer = task.result()
        except Exception as exc:  # told to the user, not raised
            if not isinstance(exc, TiergateError):
                log.exception("chat request failed")
            yield Update("error", note=fmt.error_text(exc))
            return
        if answer.chunks is None:
            text = ((answer.response or {}).get("choices") or [{}])[0].get("message", {}).get("content") or ""
            yield Update("done", text=text, meta=answer.meta)
            return
        chunks = answer.chunks
        reader = SSEReader()
        sent = 0.0
        try:
            async for chunk in chunks:
                deltas = reader.feed(chunk)
                if reader.error:
                    break
                if deltas:
                    text += "".join(deltas)
                    if time.monotonic() - sent >= STREAM_EVERY:
                        sent = time.monotonic()
                        yield Update("text", text=text, meta=answer.meta)
        except Exception as exc:  # the worker broke off: keep what came
            if not isinstance(exc, TiergateError):
                log.exception("stream broke off")
            yield Update("error", text=text, note=fmt.error_text(exc), meta=answer.meta)
            return
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined] - ends the lease and bills the answer
        if reader.error:
            yield Update("error", text=text, note=f"❌ The GPU worker reported an error: {reader.error}", meta=answer.meta)
            return
        yield Update("done", text=text, meta=answer.meta)
    finally:
        if not task.done():
            task.cancel()  # Stop pressed while waiting: leave the queue; the tier boots on for others
            with contextlib.suppress(BaseException):
                await task
        elif chunks is None and not task.cancelled() and task.exception() is None:
            late = task.result().chunks
            if late is not None:
                with contextlib.suppress(Exception):
                    await late.aclose()  # type: ignore[attr-defined]


def _progress_update(gateway: Gateway, p: Progress, elapsed: float, since: float, fell_back: str) -> Update:
    tier = gateway.cfg.tiers.get(p.tier)
    gpu = tier.gpu if tier else ""
    eta = None if p.eta is None else max(0.0, p.eta - since)
    info = {"tier": p.tier, "gpu": gpu, "stage": p.stage, "elapsed": round(elapsed, 1),
            "eta": None if eta is None else round(eta, 1), "position": p.position, "message": p.message or fell_back}
    note = fmt.progress_text(p, gpu, elapsed, eta)
    if fell_back and p.stage != "fallback":
        note = f"↪️ {fell_back}\n\n{note}"
    return Update("progress", note=note, progress=info)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
