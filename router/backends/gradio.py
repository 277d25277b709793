"""Workers that run the upstream Qwen3-VL web demo (`web_demo_mm.py`) instead of an OpenAI server.

The demo's API (Gradio 5, tuples-format Chatbot) is `/add_file (history, file)`,
`/add_text (history, text)`, then `/predict (chatbot)`, a generator yielding the whole
chatbot with a growing last answer. What the model reads is not the `history` sent along
but a per-session `gr.State` (`task_history`) that only those calls can append to, so:

* a conversation needs a Gradio session to itself: Clients (one session each) are pooled
  per worker, handed to one conversation at a time, and `/reset_state` clears the session
  before a Client goes back to the pool;
* past assistant turns cannot be put into `task_history` (only `/predict` writes answers),
  so the conversation is sent as one user turn: every image and video, then one text that
  is a transcript of the earlier turns followed by the new message.

gradio_client is synchronous: each conversation runs in a thread of its own that feeds an
asyncio.Queue, so the event loop never blocks, however long the answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import html
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
from gradio_client import Client, handle_file

from ..errors import BadRequest, TiergateError, UpstreamError, WorkerUnreachable
from ..sse import chunk_bytes, completion_dict
from .base import Identity

_MEDIA_PARTS = {"image_url": "image", "image": "image", "video_url": "video", "video": "video"}
_ROLE_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
# The demo tells videos from images by file suffix, so each temp file gets the right one.
_SUFFIXES = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
    "image/bmp": ".bmp", "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov",
    "video/x-matroska": ".mkv", "video/avi": ".avi", "video/x-msvideo": ".avi",
}
_MAX_IDLE = 8  # idle Clients kept per worker; each holds a heartbeat thread
_POLL = 0.02  # seconds between looks at a running /predict job
_FENCE = re.compile(r'<pre><code class="language-([^"]*)">')
# Nothing answers, or the event stream broke off (gradio_client then cancels the job).
_UNREACHABLE = (httpx.ConnectError, httpx.RemoteProtocolError, ConnectionError, concurrent.futures.CancelledError)
Event = tuple[str, "str | BaseException | None"]  # ("text", answer so far) | ("error", exc) | ("done", None)
Emit = Callable[[Event], None]


class GradioBackend:
    def __init__(self, *, timeout: float = 600.0) -> None:
        self.timeout = timeout
        self._http = httpx.AsyncClient(timeout=3.0, trust_env=False)
        self._idle: dict[str, list[Client]] = {}
        self._lock = threading.Lock()  # guards _idle; taken from conversation threads

    async def health(self, base_url: str, expect: Identity | None = None) -> bool:
        """The demo cannot name its instance or model: any Gradio app answering `/config` counts."""
        try:
            ok = (await self._http.get(base_url.rstrip("/") + "/config")).status_code == 200
        except httpx.HTTPError:
            ok = False
        if not ok:
            self._forget(base_url)  # a booting or dead worker: its pooled sessions are gone
        return ok

    async def complete(self, base_url: str, body: dict) -> dict:
        text = ""
        async with contextlib.aclosing(self._answers(base_url, body)) as answers:
            async for text in answers:
                pass
        prompt, _ = _flatten(body.get("messages"))
        usage = {"prompt_tokens": _tokens(prompt), "completion_tokens": _tokens(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return completion_dict("", body.get("model", ""), text, "stop", usage)

    async def stream(self, base_url: str, body: dict) -> AsyncIterator[bytes]:
        cid, model = f"chatcmpl-{uuid.uuid4().hex}", body.get("model", "")
        sent, started = "", False
        async with contextlib.aclosing(self._answers(base_url, body)) as answers:
            async for text in answers:  # the first step raises before any byte is yielded
                if not started:
                    yield chunk_bytes(cid, model, {"role": "assistant", "content": ""})
                    started = True
                # Each update is the whole answer so far; send only what is new. An update
                # that does not extend what was sent (the demo re-renders markup mid-way) waits.
                if text.startswith(sent) and len(text) > len(sent):
                    yield chunk_bytes(cid, model, {"content": text[len(sent):]})
                    sent = text
        if not started:
            yield chunk_bytes(cid, model, {"role": "assistant", "content": ""})
        yield chunk_bytes(cid, model, {}, "stop")
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        await self._http.aclose()
        with self._lock:
            clients = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        _close(*clients)

    async def _answers(self, base_url: str, body: dict) -> AsyncIterator[str]:
        """The answer so far (plain text), once per update of the demo's chatbot."""
        prompt, media = _flatten(body.get("messages"))
        if not prompt.strip():
            raise BadRequest("the Gradio web demo needs some text in the request (it ignores image-only turns)")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        threading.Thread(
            target=self._run, args=(base_url, prompt, media, emit, stop), name="gradio-conversation", daemon=True
        ).start()
        try:
            while True:
                kind, value = await queue.get()
                if isinstance(value, BaseException):
                    raise value
                if kind == "done":
                    return
                yield value or ""
        finally:
            stop.set()  # the caller went away: the thread cancels the job and drops its Client

    def _run(self, base_url: str, prompt: str, media: list[tuple[str, str]], emit: Emit, stop: threading.Event) -> None:
        """One conversation, in its own thread: temp files, a pooled Client, one retry."""
        tmp = Path(tempfile.mkdtemp(prefix="tiergate-gradio-"))
        progress: dict = {"step": "preparing the attachments", "emitted": False}
        try:
            files = [_materialize(kind, url, tmp / str(i)) for i, (kind, url) in enumerate(media)]
            for attempt in (1, 2):
                progress["step"] = "connecting"
                client, fresh = None, True
                try:
                    client, fresh = self._checkout(base_url)
                    self._converse(client, prompt, files, emit, stop, progress)
                except _UNREACHABLE as exc:
                    if client is not None:
                        _close(client)
                    if fresh or progress["emitted"] or attempt == 2:
                        step = progress["step"]
                        raise WorkerUnreachable(f"worker {base_url} is unreachable ({step}): {_describe(exc)}") from exc
                    self._forget(base_url)  # a pooled Client failed: the worker restarted, its sessions are gone
                    continue
                except BaseException:
                    if client is not None:
                        _close(client)  # its session may still hold (or be building) a conversation
                    raise
                emit(("done", None))
                self._release(base_url, client)
                return
        except _Abandoned:
            pass
        except TiergateError as exc:
            emit(("error", exc))
        except Exception as exc:  # noqa: BLE001 - gradio_client raises many types; all are the worker's failure
            emit(("error", UpstreamError(f"worker {base_url}: {progress['step']} failed: {_describe(exc)}")))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _converse(
        self, client: Client, prompt: str, files: list[str], emit: Emit, stop: threading.Event, progress: dict
    ) -> None:
        """Upload the media, add the text, then follow `/predict` until it ends."""
        deadline = time.monotonic() + self.timeout
        for path in files:
            progress["step"] = "/add_file"
            client.submit([], handle_file(path), api_name="/add_file").result(timeout=self.timeout)
        progress["step"] = "/add_text"
        chatbot = client.submit([], prompt, api_name="/add_text").result(timeout=self.timeout)
        progress["step"] = "/predict"
        job = client.submit(chatbot, api_name="/predict")
        seen = 0
        while True:
            finished = job.done()
            outputs = job.outputs()
            for update in outputs[seen:]:
                text = _bot_text(update)
                if text is not None:
                    emit(("text", text))
                    progress["emitted"] = True
            seen = len(outputs)
            if finished:
                job.result()  # raises the app's error, if it had one
                return
            if stop.is_set() or time.monotonic() > deadline:
                job.cancel()
                if stop.is_set():
                    raise _Abandoned
                raise TimeoutError(f"no complete answer within {self.timeout:g}s")
            time.sleep(_POLL)

    def _checkout(self, base_url: str) -> tuple[Client, bool]:
        """An idle Client of this worker, or a new one (which fetches the app's config)."""
        with self._lock:
            idle = self._idle.get(base_url)
            if idle:
                return idle.pop(), False
        client = Client(
            base_url,
            verbose=False,
            download_files=False,  # the demo echoes our uploads back: no need to fetch them
            analytics_enabled=False,
            httpx_kwargs={"timeout": httpx.Timeout(self.timeout, connect=5.0), "trust_env": False},
        )
        return client, True

    def _release(self, base_url: str, client: Client) -> None:
        """Clear the session's `task_history`, then pool the Client (or close it)."""
        try:
            client.submit([], api_name="/reset_state").result(timeout=30)
        except Exception:  # noqa: BLE001 - a session we cannot clear is simply not reused
            _close(client)
            return
        with self._lock:
            idle = self._idle.setdefault(base_url, [])
            if len(idle) < _MAX_IDLE:
                idle.append(client)
                return
        _close(client)

    def _forget(self, base_url: str) -> None:
        with self._lock:
            stale = self._idle.pop(base_url, [])
        _close(*stale)


class _Abandoned(Exception):
    """The caller stopped reading; the conversation ends quietly."""


def _close(*clients: Client) -> None:
    """Close Clients in the background: each close waits up to 1 s for its heartbeat thread."""
    if clients:
        threading.Thread(target=lambda: [c.close() for c in clients], name="gradio-close", daemon=True).start()


def _flatten(messages: object) -> tuple[str, list[tuple[str, str]]]:
    """OpenAI messages → (one prompt text, [(kind, url)] in order).

    A single user message is sent as is; anything longer becomes a "Role: text" transcript.
    """
    turns: list[tuple[str, str]] = []
    media: list[tuple[str, str]] = []
    for msg in messages if isinstance(messages, list) else []:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        texts: list[str] = [content] if isinstance(content, str) else []
        for part in content if isinstance(content, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in _MEDIA_PARTS:
                value = part.get(kind)
                url = value.get("url") if isinstance(value, dict) else value
                if isinstance(url, str) and url:
                    media.append((_MEDIA_PARTS[kind], url))
        text = "\n".join(t for t in texts if t.strip())
        if text:
            turns.append((str(msg.get("role", "user")), text))
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1], media
    return "\n\n".join(f"{_ROLE_LABELS.get(role, role.title())}: {text}" for role, text in turns), media


def _materialize(kind: str, url: str, stem: Path) -> str:
    """A data: URL → a temp file with a suffix the demo understands; an http(s) URL as is."""
    if not url.startswith("data:"):
        return url  # the worker downloads it (Gradio checks the address is public)
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise BadRequest(f"{kind} data: URL must be base64-encoded")
    mime = header[5:].split(";")[0].strip().lower()
    path = stem.with_suffix(_SUFFIXES.get(mime) or (".mp4" if kind == "video" else ".png"))
    try:
        path.write_bytes(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{kind} data: URL has invalid base64") from exc
    return str(path)


def _bot_text(chatbot: object) -> str | None:
    """The last bot message of a tuples-format chatbot value, as plain text."""
    if isinstance(chatbot, list) and chatbot and isinstance(chatbot[-1], (list, tuple)) and len(chatbot[-1]) == 2:
        bot = chatbot[-1][1]
        return _plain(bot) if isinstance(bot, str) else None
    return None


def _plain(text: str) -> str:
    """Undo the demo's `_parse_text` HTML: `<br>` lines, `<pre><code>` fences, escapes in code."""
    text = _FENCE.sub(lambda m: "\n```" + m.group(1), text)
    text = text.replace("<br></code></pre>", "\n```").replace("<br>", "\n").replace("\\`", "`")
    return html.unescape(text).replace("\xa0", " ").lstrip("\n")


def _tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0  # an estimate: the demo reports no usage


def _describe(exc: BaseException) -> str:
    if isinstance(exc, concurrent.futures.CancelledError):
        return "the event stream broke off"  # how gradio_client reports a vanished server
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
