"""From a conversation in the UI to a streamed answer from the gateway.

The chat tab and the `/chat` API both go through `stream_answer`, which bridges the
gateway's `on_progress` callback (called while a tier boots) and its SSE chunks into one
async stream of `Update`s. Cancelling it cancels the wait or closes the stream, so the
lease is released at once.

Gradio never closes a generator handler whose page went away: its wrapper around every
handler drops the generator without `aclose()`, so whatever it holds (a place in a boot
queue, a GPU lease) would stay held. So the work runs in a task of its own (`detached`),
registered per browser session (`Sessions`): a Stop, a clear, the page's `unload` or the
queue dropping the event (a closed connection) cancels that task, whatever stage it is in.

Only files Gradio received through an upload, or that tiergate wrote itself, are ever
read (`read_upload`): a raw queue call can name any path, and must learn nothing from it.
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
from typing import Any, Literal, TypeVar

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
    kind: Literal["routed", "progress", "text", "done", "error"]
    text: str = ""  # the answer so far
    note: str = ""  # progress or error text for the user
    meta: Meta | None = None
    progress: dict[str, Any] | None = None  # for scripts: stage, elapsed, eta, position


# --- files: only uploads, and what tiergate wrote itself --------------------------------

_OWN_DIRS: list[Path] = []  # directories tiergate writes files into that the chat may send (presenter thumbnails)


def allow_dir(path: str | Path) -> None:
    """Let files tiergate itself writes under `path` be attached (e.g. a replayed answer's thumbnail)."""
    _OWN_DIRS.append(Path(path).resolve())


def readable_dirs() -> list[Path]:
    from gradio.utils import get_upload_folder  # where Gradio keeps what it received through uploads

    return [Path(get_upload_folder()).resolve(), *_OWN_DIRS]


def not_an_upload(path: str) -> BadRequest:
    """The same words whether the path exists or not: a raw queue call learns nothing from them."""
    name = Path(str(path)).name or "an attachment"
    return BadRequest(f"{name}: this file was not received through an upload here; attach it again",
                      code="not_an_upload")


def read_upload(path: str) -> bytes:
    """The bytes of a file Gradio received through an upload (or tiergate wrote), else `not_an_upload`."""
    try:
        real = Path(str(path)).resolve(strict=True)  # symlinks followed, `..` gone: judge where it really is
        if not real.is_file() or not any(real.is_relative_to(d) for d in readable_dirs()):
            raise not_an_upload(path)
        return real.read_bytes()
    except (OSError, ValueError, RuntimeError):
        raise not_an_upload(path) from None


def media_kind(path: str) -> Literal["image", "video"]:
    """Image or video by file type; anything else is a bad request, named."""
    mime = mimetypes.guess_type(path)[0] or ""
    if mime.startswith("video/") or path.lower().endswith(VIDEO_EXTS):
        return "video"
    if mime.startswith("image/"):
        return "image"
    raise BadRequest(f"{Path(path).name}: only images and videos can be attached, not this kind of file",
                     code="not_media")


def data_url(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if path.lower().endswith(".mkv"):
        mime = "video/x-matroska"
    return f"data:{mime};base64," + base64.b64encode(read_upload(path)).decode()


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


def build_messages(
    history: list[tuple[str, list[str], str]], text: str, files: list[str], labels: dict[str, str] | None = None
) -> list[dict]:
    """The whole conversation with its images for the tier: earlier (question, files, answer) turns, then this one.

    `labels`, when given, is filled with `messages[i].content[j]` -> how the user knows that
    part ("photo.png", "photo.png in an earlier question"), so errors can be told in their words.
    """
    messages: list[dict] = []
    turns = [*((q, f, a) for q, f, a in history), (text, files, None)]
    for n, (q, q_files, a) in enumerate(turns):
        if labels is not None:
            earlier = n < len(turns) - 1
            labels[f"messages[{len(messages)}].content"] = "an earlier question" if earlier else "your question"
            for j, f in enumerate(q_files):
                labels[f"messages[{len(messages)}].content[{j}]"] = Path(f).name + (" (in an earlier question)" if earlier else "")
        messages.append({"role": "user", "content": user_content(q, q_files)})
        if a is not None:
            messages.append({"role": "assistant", "content": a})
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


async def stream_answer(
    gateway: Gateway, build: Callable[[], dict], labels: dict[str, str] | None = None, asker: str = ""
) -> AsyncIterator[Update]:
    """Prepare, wait for the tier (reporting progress), then stream the answer text.

    `build` is a zero-argument callable returning the request body; it runs in a thread,
    since reading and base64-encoding uploads can be slow. Errors end the stream with an
    `error` update; nothing is raised, so the caller's UI always keeps working. `labels`
    (filled by `build_messages`) turns API paths in errors into the names the user knows;
    `asker` names the page (`ui:<session>`) for the idle policy's open-pages signal.
    """
    labels = labels if labels is not None else {}
    try:
        body = await asyncio.to_thread(build)
        req = await gateway.prepare_async(body, body_size(body))
    except TiergateError as exc:
        yield Update("error", note=fmt.error_text(exc, labels))
        return
    except OSError:  # never the OS's words: they would say whether a path exists
        yield Update("error", note=fmt.error_text(BadRequest("an attachment could not be read; attach it again")))
        return
    except Exception as exc:  # a broken upload must not break the app
        log.exception("could not prepare a chat request")
        yield Update("error", note=fmt.error_text(exc))
        return
    yield Update("routed", progress={"tier": req.tier, "task": req.task})

    t0 = time.monotonic()
    progress: asyncio.Queue[Progress] = asyncio.Queue()

    async def on_progress(p: Progress) -> None:
        progress.put_nowait(p)

    task = asyncio.create_task(gateway.answer(req, on_progress, asker))
    chunks: AsyncIterator[bytes] | None = None
    text = ""
    try:
        last: tuple[Progress, float] | None = None
        shown = ("", 0.0)  # stage and time of the last progress update sent
        fell_back = ""  # why the routed tier was given up, kept on screen while the fallback boots
        while not task.done():
            getter = asyncio.ensure_future(progress.get())
            try:
                await asyncio.wait({task, getter}, timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                getter.cancel()  # cancelled while waiting: leave no task behind
                raise
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
            yield Update("error", note=fmt.error_text(exc, labels))
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
            task.cancel()  # cancelled while waiting (Stop, a clear, the page gone): leave the boot queue
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
            "eta": None if eta is None else round(eta, 1), "position": p.position, "message": p.message or fell_back,
            "fallback": fell_back}  # why the routed tier was given up, for as long as its fallback is waited for
    note = fmt.progress_text(p, gpu, elapsed, eta)
    if fell_back and p.stage != "fallback":
        note = f"↪️ {fell_back}\n\n{note}"
    return Update("progress", note=note, progress=info)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# --- running work, per browser session ------------------------------------------------

T = TypeVar("T")
_END = object()


class Sessions:
    """The chat work running for each browser session, so a Stop, a clear or a closed page can cancel it."""

    def __init__(self) -> None:
        self._tasks: dict[str, set[asyncio.Task]] = {}

    def add(self, session: str, task: asyncio.Task) -> None:
        self._tasks.setdefault(session, set()).add(task)

        def forget(t: asyncio.Task) -> None:
            tasks = self._tasks.get(session)
            if tasks is not None:
                tasks.discard(t)
                if not tasks:
                    self._tasks.pop(session, None)

        task.add_done_callback(forget)

    async def cancel(self, session: str, why: str) -> int:
        """Cancel the session's work and wait (briefly) until its cleanup has released what it held."""
        tasks = [t for t in self._tasks.pop(session, set()) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            log.info("cancelled %d running answer(s) of a browser session: %s", len(tasks), why)
            await asyncio.wait(tasks, timeout=10)
        return len(tasks)


def gradio_event() -> tuple[str, Callable[[], bool]]:
    """The session of the Gradio event running now, and whether its client still listens.

    Gradio marks an event dead when its client's connection closes (`Queue.clean_events`),
    but then simply stops iterating the handler. If these internals ever move, the check
    answers True and the page's `unload` (and Stop) remain the ways to cancel.
    """
    from gradio.context import LocalContext

    blocks = LocalContext.blocks.get(None)
    event_id = LocalContext.event_id.get(None)
    request = LocalContext.request.get(None)
    session = str(getattr(request, "session_hash", "") or "")

    def alive() -> bool:
        try:
            events = blocks._queue.event_ids_to_events  # type: ignore[union-attr]
        except AttributeError:
            return True
        event = events.get(event_id)
        return event is not None and bool(getattr(event, "alive", True))

    return session, alive if blocks is not None and event_id else (lambda: True)


async def detached(
    source: AsyncIterator[T], sessions: Sessions, session: str, alive: Callable[[], bool] = lambda: True
) -> AsyncIterator[list[T]]:
    """Run `source` in a task of its own; yield what it produced since the last yield (never empty).

    The task is registered under `session` and watched: when `alive()` turns False (the
    client's connection closed) it is cancelled, as it is when this generator is closed or
    cancelled (Stop). Cancelling the task closes `source`, so its cleanup always runs.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        try:
            async with contextlib.aclosing(source) as items:  # type: ignore[type-var]
                async for item in items:
                    queue.put_nowait(item)
        finally:
            queue.put_nowait(_END)

    task = asyncio.create_task(pump())
    if session:
        sessions.add(session, task)

    async def watch() -> None:
        while not task.done():
            await asyncio.wait({task}, timeout=TICK)
            if not task.done() and not alive():
                log.info("the client of a running answer went away: cancelling it")
                task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            ended = batch[-1] is _END
            items = [b for b in batch if b is not _END]
            if items:
                yield items
            if ended:
                break
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({task}, timeout=10)
