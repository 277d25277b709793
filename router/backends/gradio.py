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

What the demo cannot take is refused before any machine starts (`refusal`, called by
router/request.py): a request with no text (the demo answers nothing), `n > 1` or
`logprobs` (it gives one plain answer), and http(s) media URLs: the demo's download guard
refuses them, and fetching them in the gateway would make a public gateway fetch any URL
for anyone (SSRF) for a gain the client gets by sending the bytes as a data: URL. Media are
uploaded under file names Python's built-in mimetypes table knows (`.png`, `.mp4`, ...),
since the demo refuses any other name on a host without /etc/mime.types; the model reads
the bytes, not the name. Sampling parameters (`temperature`, `max_tokens`, ...) are
ignored: the demo has fixed ones.

The demo answers in HTML (`_parse_text`): `plain_text` undoes exactly that and nothing
more. Errors never show the worker's address; they name the tier.

gradio_client is synchronous (and slow to import, so it is imported on first use): each
conversation runs in a thread of its own that feeds an asyncio.Queue, so the event loop
never blocks, however long the answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from ..errors import BadRequest, TiergateError, UpstreamError, WorkerUnreachable
from ..messages import Media, Turn, walk
from ..sse import chunk_bytes, completion_dict
from .base import Identity

if TYPE_CHECKING:
    from gradio_client import Client

log = logging.getLogger("tiergate.backends.gradio")

_ROLE_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
# The demo tells videos from images by file suffix, and its upload button accepts only
# names whose type Python's *built-in* mimetypes table knows (a host without
# /etc/mime.types has nothing else): .webp and .mkv are unknown there, .webm only since
# Python 3.11. Every accepted type gets a suffix known everywhere and of the right kind;
# the model's readers (Pillow, FFmpeg) go by the bytes, so WebP named .png and Matroska
# or WebM named .mp4 read as what they are.
UPLOAD_SUFFIXES = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/gif": ".gif", "image/bmp": ".bmp",
    "image/webp": ".png",
    "video/mp4": ".mp4", "video/quicktime": ".mov", "video/avi": ".avi", "video/x-msvideo": ".avi",
    "video/webm": ".mp4", "video/x-matroska": ".mp4",
}
_MAX_IDLE = 8  # idle Clients kept per worker; each holds a heartbeat thread
_POLL = 0.02  # seconds between looks at a running /predict job
# What gradio_client says when the app raised something other than gr.Error and was
# launched without show_error (the upstream demo is): the text helps no one.
_HIDDEN_ERROR = "has not enabled verbose error reporting"
Event = tuple[str, "str | BaseException | None"]  # ("text", answer so far) | ("error", exc) | ("done", None)
Emit = Callable[[Event], None]


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """Nothing answers, or the event stream broke off (gradio_client then cancels the job)."""
    return (httpx.ConnectError, httpx.RemoteProtocolError, ConnectionError, concurrent.futures.CancelledError)


def worker_label(tier: str) -> str:
    """How errors name a worker: by its tier, never by its (private) address."""
    return f"the {tier} tier's web demo" if tier else "the tier's web demo"


# --- what the demo can take ------------------------------------------------------------


def refusal(tier: str, turns: Sequence[Turn], body: dict, n: int = 1) -> BadRequest | None:
    """Why the web demo cannot answer this request (a 400 to give before any start), or None."""
    label = worker_label(tier)
    if n > 1:
        return BadRequest(f"`n` is {n}, but {label} gives one answer per question; send n = 1", param="n",
                          code="unsupported_parameter")
    if body.get("logprobs") is True:
        return BadRequest(f"{label} cannot give log probabilities; leave `logprobs` out", param="logprobs",
                          code="unsupported_parameter")
    prompt, media = flatten(turns)
    for m in media:
        if not m.url.startswith("data:"):
            return BadRequest(
                f"{m.where}: {label} cannot fetch {m.kind}s from URLs; send the {m.kind} itself, "
                f"as a data: URL (data:<type>;base64,...)",
                param=m.where, code="unsupported_url",
            )
    if not prompt.strip():
        return BadRequest(f"{label} answers only questions with some text: add a text part to the message",
                          param="messages", code="text_required")
    return None


def flatten(turns: Sequence[Turn]) -> tuple[str, list[Media]]:
    """The conversation as the demo can take it: one prompt text, then every image and video in order.

    A single user message is sent as is; anything longer becomes a "Role: text" transcript.
    """
    said: list[tuple[str, str]] = []
    media: list[Media] = []
    for turn in turns:
        media.extend(turn.media)
        text = "\n".join(t for t in turn.texts if t.strip())
        if text:
            said.append((turn.role, text))
    if len(said) == 1 and said[0][0] == "user":
        return said[0][1], media
    return "\n\n".join(f"{_ROLE_LABELS.get(role, role.title())}: {text}" for role, text in said), media


# --- the demo's HTML -------------------------------------------------------------------

# The demo's `_parse_text`: lines split on "\n" with empty ones dropped, joined by "<br>"
# (none before the first); a line holding ``` becomes `<pre><code class="language-X">`
# (X: what follows its last backtick) or, when closing, `<br></code></pre>`; inside code,
# every line but the first of the answer gets `` ` `` as "\`" and these characters as entities.
_CODE_ENTITIES = {
    "&lt;": "<", "&gt;": ">", "&nbsp;": " ", "&ast;": "*", "&lowbar;": "_", "&#45;": "-", "&#46;": ".",
    "&#33;": "!", "&#40;": "(", "&#41;": ")", "&#36;": "$", "\\`": "`",
}
_CODE_ESCAPES = re.compile("|".join(re.escape(k) for k in _CODE_ENTITIES))
_OPEN = re.compile(r'<pre><code class="language-([^"]*)">')
_CLOSE = "<br></code></pre>"
_MARKERS = re.compile(r'(<pre><code class="language-[^"]*">|<br></code></pre>|<br>)')


def plain_text(shown: str) -> str:
    """The model's answer from the demo's HTML: undo `_parse_text` exactly, and nothing else.

    Text outside code was not escaped, so it is left alone (a model's "&amp;" stays "&amp;").
    What the demo threw away cannot come back: empty lines, and text sharing a line with a
    fence. A "&lt;" that the model itself wrote inside code reads back as "<".
    """
    pieces = _MARKERS.split(shown)
    lines = [pieces[0]] if pieces[0] or len(pieces) == 1 else []
    in_code = False
    for marker, rest in zip(pieces[1::2], pieces[2::2], strict=True):
        if marker == "<br>" or (marker == _CLOSE and not in_code):  # outside code, a closing tag is just text
            line = marker.removeprefix("<br>") + rest
            lines.append(_CODE_ESCAPES.sub(lambda m: _CODE_ENTITIES[m.group(0)], line) if in_code else line)
        elif marker == _CLOSE:
            lines.append("```" + rest)
            in_code = False
        elif in_code:  # an opening tag inside code cannot come from the demo ("<" is escaped there)
            lines.append(marker + rest)
        else:
            match = _OPEN.fullmatch(marker)
            assert match is not None
            lines.append("```" + match.group(1) + rest)
            in_code = True
    return "\n".join(lines)


def settled(text: str) -> str:
    """The part of an answer so far that later updates of the demo cannot rewrite.

    The demo re-renders the whole answer each time, and its last line may still change: a
    "`" may grow into a fence (the demo then drops the rest of that line) and a "<" into a
    `<box>`/`<ref>` tag it strips. Earlier lines are final.
    """
    cut = text.rfind("\n") + 1
    last = text[cut:]
    return text[:cut] if "`" in last or "<" in last else text


# --- the backend -----------------------------------------------------------------------


class GradioBackend:
    def __init__(self, *, timeout: float = 600.0, tmp_dir: str | None = None) -> None:
        self.timeout = timeout
        self.tmp_dir = tmp_dir  # where attachments are written for upload (default: the system's temp folder)
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

    async def complete(self, base_url: str, body: dict, *, tier: str = "") -> dict:
        text = ""
        async with contextlib.aclosing(self._answers(base_url, body, tier)) as answers:
            async for text in answers:
                pass
        prompt, _ = flatten(walk(body.get("messages")))
        usage = {"prompt_tokens": _tokens(prompt), "completion_tokens": _tokens(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return completion_dict("", body.get("model", ""), text, "stop", usage)

    async def stream(self, base_url: str, body: dict, *, tier: str = "") -> AsyncIterator[bytes]:
        cid, model = f"chatcmpl-{uuid.uuid4().hex}", body.get("model", "")
        sent, text, started = "", "", False
        async with contextlib.aclosing(self._answers(base_url, body, tier)) as answers:
            async for text in answers:  # the first step raises before any byte is yielded
                if not started:
                    yield chunk_bytes(cid, model, {"role": "assistant", "content": ""})
                    started = True
                # Each update is the whole answer so far: send what is new and can no longer change.
                ready = settled(text)
                if ready.startswith(sent) and len(ready) > len(sent):
                    yield chunk_bytes(cid, model, {"content": ready[len(sent):]})
                    sent = ready
        if not started:
            yield chunk_bytes(cid, model, {"role": "assistant", "content": ""})
        if text != sent:
            common = len(sent) if text.startswith(sent) else _common_prefix(text, sent)
            if common < len(sent):  # cannot happen with the demo's HTML; a sent byte cannot be taken back
                log.warning("the %s tier's streamed answer diverged from the final one at char %d", tier or "?", common)
            yield chunk_bytes(cid, model, {"content": text[common:]})
        yield chunk_bytes(cid, model, {}, "stop")
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        await self._http.aclose()
        with self._lock:
            clients = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        _close(*clients)

    async def _answers(self, base_url: str, body: dict, tier: str) -> AsyncIterator[str]:
        """The answer so far (plain text), once per update of the demo's chatbot."""
        turns = walk(body.get("messages"))
        n = body.get("n")
        problem = refusal(tier, turns, body, n if isinstance(n, int) else 1)  # router/request.py refused these already
        if problem is not None:
            raise problem
        prompt, media = flatten(turns)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        threading.Thread(
            target=self._run, args=(base_url, tier, prompt, media, emit, stop), name="gradio-conversation", daemon=True
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

    def _run(self, base_url: str, tier: str, prompt: str, media: list[Media], emit: Emit, stop: threading.Event) -> None:
        """One conversation, in its own thread: temp files, a pooled Client, one retry."""
        tmp = Path(tempfile.mkdtemp(prefix="tiergate-gradio-", dir=self.tmp_dir))
        progress: dict = {"step": "preparing the attachments", "emitted": False}
        label = worker_label(tier)
        unreachable = _unreachable_errors()
        try:
            files = [_materialize(m, tmp / str(i)) for i, m in enumerate(media)]
            for attempt in (1, 2):
                progress["step"] = "connecting"
                client, fresh = None, True
                try:
                    client, fresh = self._checkout(base_url)
                    self._converse(client, prompt, files, emit, stop, progress)
                except unreachable as exc:
                    if client is not None:
                        _close(client)
                    if fresh or progress["emitted"] or attempt == 2:
                        log.warning("%s at %s is unreachable (%s): %s", label, base_url, progress["step"], _describe(exc))
                        raise WorkerUnreachable(
                            f"{label} is unreachable ({_step(progress)}): {_scrub(_describe(exc), base_url)}"
                        ) from exc
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
            log.warning("%s at %s failed (%s): %s", label, base_url, progress["step"], _describe(exc))
            emit(("error", _demo_error(exc, label, base_url, progress)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _converse(
        self, client: Client, prompt: str, files: list[str], emit: Emit, stop: threading.Event, progress: dict
    ) -> None:
        """Upload the media, add the text, then follow `/predict` until it ends."""
        from gradio_client import handle_file

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
                raise TimeoutError(f"no complete answer within {self.timeout:g} s (the gateway's request_timeout)")
            time.sleep(_POLL)

    def _checkout(self, base_url: str) -> tuple[Client, bool]:
        """An idle Client of this worker, or a new one (which fetches the app's config)."""
        from gradio_client import Client

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


def _materialize(m: Media, stem: Path) -> str:
    """A data: URL -> a temp file named so the demo takes it (see UPLOAD_SUFFIXES)."""
    header, sep, data = m.url.partition(",")
    if not m.url.startswith("data:") or not sep or not header.endswith(";base64"):
        raise BadRequest(f"{m.where}: the web demo needs the {m.kind} as a base64 data: URL", param=m.where)
    mime = header[5:].split(";")[0].strip().lower()
    path = stem.with_suffix(UPLOAD_SUFFIXES.get(mime) or (".mp4" if m.kind == "video" else ".png"))
    try:
        path.write_bytes(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{m.where}: base64 data is not valid", param=m.where, code="invalid_base64") from exc
    return str(path)


def _bot_text(chatbot: object) -> str | None:
    """The last bot message of a tuples-format chatbot value, as plain text."""
    if isinstance(chatbot, list) and chatbot and isinstance(chatbot[-1], list | tuple) and len(chatbot[-1]) == 2:
        bot = chatbot[-1][1]
        return plain_text(bot) if isinstance(bot, str) else None
    return None


def _demo_error(exc: Exception, label: str, base_url: str, progress: dict) -> UpstreamError:
    """What the client is told when the demo fails: something a person can act on, no address."""
    from gradio_client.exceptions import AppError

    step = _step(progress)
    if isinstance(exc, AppError):
        if _HIDDEN_ERROR in str(exc):
            return UpstreamError(
                f"{label} failed while {step} and does not say why (it was launched without show_error=True); "
                "the demo's log on its machine has the details. Trying again, with a shorter question or smaller "
                "images or videos, may help."
            )
        return UpstreamError(f"{label} refused the request while {step}: {_scrub(_untag(str(exc)), base_url)}")
    if isinstance(exc, TimeoutError):
        return UpstreamError(f"{label} gave no complete answer in time ({step}): {exc}", code="upstream_timeout")
    return UpstreamError(f"{label} failed while {step}: {_scrub(_describe(exc), base_url)}")


def _step(progress: dict) -> str:
    return {
        "connecting": "connecting", "/add_file": "uploading an attachment", "/add_text": "taking the question",
        "/predict": "answering",
    }.get(progress["step"], progress["step"])


def _scrub(text: str, base_url: str) -> str:
    """Remove the worker's address from a message (it may be a private IP, none of a client's business)."""
    parts = urlsplit(base_url)
    for secret in (base_url.rstrip("/"), parts.netloc, parts.hostname or ""):
        if secret:
            text = text.replace(secret, "<worker>")
    return text


def _untag(text: str) -> str:
    return re.sub(r"<[^>]{1,100}>", "", text)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0  # an estimate: the demo reports no usage


def _describe(exc: BaseException) -> str:
    if isinstance(exc, concurrent.futures.CancelledError):
        return "the event stream broke off"  # how gradio_client reports a vanished server
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

