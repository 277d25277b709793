"""OpenAI server-sent events: read a passing stream, and write one from a stored answer."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import orjson


class SSEReader:
    """Follows an OpenAI chat stream as its bytes pass by, without holding them up.

    It keeps only what a complete answer needs (text, finish reason, usage), so the
    gateway can cache a streamed answer once it has seen it end properly.
    """

    def __init__(self) -> None:
        self._buf = b""
        self.content: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.model = ""
        self.id = ""
        self.done = False
        self.error: str | None = None

    def feed(self, data: bytes) -> list[str]:
        """Consume bytes; returns the content deltas completed by them."""
        self._buf += data
        deltas: list[str] = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                self.error = str(chunk["error"])
                continue
            self.model = chunk.get("model") or self.model
            self.id = chunk.get("id") or self.id
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    self.content.append(delta)
                    deltas.append(delta)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
        return deltas

    @property
    def complete(self) -> bool:
        return self.done and self.finish_reason is not None and self.error is None

    def completion(self) -> dict:
        return completion_dict(self.id, self.model, "".join(self.content), self.finish_reason or "stop", self.usage)


def completion_dict(cid: str, model: str, text: str, finish_reason: str = "stop", usage: dict | None = None) -> dict:
    return {
        "id": cid or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": usage or {},
    }


def chunk_bytes(cid: str, model: str, delta: dict, finish_reason: str | None = None) -> bytes:
    chunk = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def replay(response: dict) -> AsyncIterator[bytes]:
    """A stored chat.completion as the SSE stream a worker would have sent."""
    cid = response.get("id") or f"chatcmpl-{uuid.uuid4().hex}"
    model = response.get("model", "")
    choice = (response.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    yield chunk_bytes(cid, model, {"role": "assistant", "content": ""})
    if text:
        yield chunk_bytes(cid, model, {"content": text})
    yield chunk_bytes(cid, model, {}, choice.get("finish_reason") or "stop")
    yield b"data: [DONE]\n\n"
