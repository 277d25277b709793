"""Answers keyed by what determines them, so a repeat costs no GPU at all.

The key is the sha256 of canonical JSON of the tier's model, the messages with each
image or video replaced by the sha256 of its bytes, and every parameter that changes the
output. Presenters replay prepared answers from here; pinned entries live in a separate
store that neither TTL nor the size limit touches. diskcache is SQLite underneath, so
every call runs in a thread to keep the event loop free; new answers go to disk through
one writer thread, many per transaction, after they have been answered (a repeat hits
the answer in memory meanwhile).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from .config import CacheConfig
from .errors import BadRequest
from .messages import walk

WRITE_EVERY = 0.5  # seconds new answers gather in memory (where repeats already hit) before one write

# Request fields that change what the model says. Everything else (stream, user, ...) does not.
OUTPUT_PARAMS = (
    "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens", "seed", "stop", "n",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs", "top_logprobs",
    "response_format", "tools", "tool_choice", "chat_template_kwargs", "enable_thinking",
)


def cache_key(model: str, canonical_messages: list, body: dict) -> str:
    params = {k: body[k] for k in OUTPUT_PARAMS if k in body}
    doc = {"model": model, "messages": canonical_messages, "params": params}
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class Entry:
    key: str
    response: dict  # the complete chat.completion
    tier: str
    task: str
    model: str
    question: str
    created: float
    thumbnail: str = ""  # data: URL of a small JPEG of the first image, for the presenter view
    pinned: bool = False

    @property
    def text(self) -> str:
        try:
            return self.response["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            return ""


class ResponseCache:
    def __init__(self, cfg: CacheConfig, directory: Path) -> None:
        self.cfg = cfg
        directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(directory / "answers"), size_limit=cfg.max_size, eviction_policy="least-recently-stored")
        self._pinned = diskcache.Cache(str(directory / "pinned"), size_limit=2**62, eviction_policy="none")
        self._inflight: dict[str, asyncio.Future[Entry | None]] = {}
        self._unwritten: dict[str, Entry] = {}  # answered, on its way to disk: a repeat must already hit
        self._queue: list[tuple[Entry, list]] = []
        self._writer: asyncio.Task | None = None
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="cache-writer")

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def _get(self, key: str) -> Entry | None:
        raw = self._pinned.get(key)
        if raw is None:
            raw = self._cache.get(key)
        return Entry(**raw) if raw is not None else None

    async def get(self, key: str) -> Entry | None:
        if (entry := self._unwritten.get(key)) is not None:
            return entry
        return await asyncio.to_thread(self._get, key)

    def keep(self, entry: Entry, messages: list) -> None:
        """Queue a complete, successful answer for disk (its thumbnail is made there, off the event loop)."""
        self._unwritten[entry.key] = entry
        self._queue.append((entry, messages))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(WRITE_EVERY)  # gather a batch: one transaction for many answers, rarely a busy disk
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await loop.run_in_executor(self._disk, self._write_batch, batch)
            finally:
                for entry, _ in batch:
                    self._unwritten.pop(entry.key, None)

    def _write_batch(self, batch: list[tuple[Entry, list]]) -> None:
        with self._cache.transact():
            for entry, messages in batch:
                entry.thumbnail = thumbnail(messages)
                self._cache.set(entry.key, entry.__dict__, expire=self.cfg.ttl)

    async def flush(self) -> None:
        """Wait until every kept answer is on disk (at shutdown: nothing answered is lost)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def put(self, entry: Entry) -> None:
        """Store an answer now (imports, tests); the answer path uses `keep`."""
        await asyncio.to_thread(self._cache.set, entry.key, entry.__dict__, expire=self.cfg.ttl)

    def leader(self, key: str) -> asyncio.Future[Entry | None] | None:
        return self._inflight.get(key)

    def begin(self, key: str) -> asyncio.Future[Entry | None]:
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        return fut

    def finish(self, key: str, entry: Entry | None) -> None:
        """End the single flight: followers get `entry` (None: nothing worth keeping, ask again)."""
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(entry)

    # --- presenter --------------------------------------------------------------------

    def _list(self) -> list[Entry]:
        out: dict[str, Entry] = {}
        for store in (self._cache, self._pinned):
            for key in store.iterkeys():
                raw = store.get(key)
                if raw is not None:
                    out[key] = Entry(**raw)
        return sorted(out.values(), key=lambda e: e.created, reverse=True)

    async def entries(self, query: str = "") -> list[Entry]:
        items = await asyncio.to_thread(self._list)
        q = query.strip().lower()
        if q:
            items = [e for e in items if q in e.question.lower() or q in e.text.lower() or q in e.tier]
        return items

    def _pin(self, key: str, pinned: bool) -> bool:
        entry = self._get(key)
        if entry is None:
            return False
        entry.pinned = pinned
        if pinned:
            self._pinned.set(key, entry.__dict__)
            self._cache.delete(key)
        else:
            self._cache.set(key, entry.__dict__, expire=self.cfg.ttl)
            self._pinned.delete(key)
        return True

    async def pin(self, key: str, pinned: bool = True) -> bool:
        return await asyncio.to_thread(self._pin, key, pinned)

    def _export(self, keys: list[str] | None) -> bytes:
        items = [e for e in self._list() if keys is None or e.key in keys]
        lines = [json.dumps({"tiergate_demo_set": 1, "count": len(items), "exported": time.time()})]
        lines += [json.dumps(e.__dict__, ensure_ascii=False) for e in items]
        return ("\n".join(lines) + "\n").encode()

    async def export(self, keys: list[str] | None = None) -> bytes:
        """A demo set as one JSON-lines file: a header line, then one entry per line."""
        return await asyncio.to_thread(self._export, keys)

    def _import(self, data: bytes) -> int:
        try:
            lines = data.decode("utf-8").splitlines()
            header = json.loads(lines[0]) if lines else {}
        except (UnicodeDecodeError, ValueError):
            header = {}
        if not isinstance(header, dict) or header.get("tiergate_demo_set") != 1:
            raise ValueError("not a tiergate demo set (the first line must be its header)")
        entries = []
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                raw: dict[str, Any] = json.loads(line)
                entries.append(Entry(**raw))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"line {n}: not a cache entry ({exc})") from None
        for e in entries:  # all validated before anything is written
            e.pinned = True
            self._pinned.set(e.key, e.__dict__)
        return len(entries)

    async def import_set(self, data: bytes) -> int:
        """Imported answers are pinned: a carried demo must not expire on the new gateway."""
        return await asyncio.to_thread(self._import, data)

    def close(self) -> None:
        self._disk.shutdown(wait=True)
        self._cache.close()
        self._pinned.close()


def thumbnail(messages: list[dict]) -> str:
    """A small JPEG of the first data: image (or a video's first frame) in the conversation, as a data: URL (or '')."""
    try:
        turns = walk(messages)
    except BadRequest:  # an imported set may hold anything: no thumbnail
        return ""
    for media in (m for turn in turns for m in turn.media):
        if media.url.startswith("data:") and ";base64," in media.url:
            try:
                data = base64.b64decode(media.url.split(",", 1)[1])
                img = _first_frame(data) if media.kind == "video" else _open_image(data)
                img.thumbnail((160, 160))
                buf = io.BytesIO()
                img.convert("RGB").save(buf, "JPEG", quality=80)
                return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
            except Exception:  # noqa: BLE001 - a thumbnail is a nicety
                return ""
    return ""


def _open_image(data: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data))


def _first_frame(data: bytes) -> Any:
    """The first decodable frame of a video (PyAV decodes only up to it)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            return frame.to_image()
    raise ValueError("no video frame")


