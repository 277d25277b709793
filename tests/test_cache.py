"""The answer cache as presenters use it: keys, pinning, demo sets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from router.cache import Entry, ResponseCache, cache_key
from router.config import CacheConfig
from router.sse import completion_dict


def entry(key: str, text: str = "an answer", question: str = "what is it?") -> Entry:
    return Entry(key=key, response=completion_dict("c1", "m", text), tier="light", task="caption", model="m",
                 question=question, created=time.time())


def test_key_depends_on_what_changes_the_answer() -> None:
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"sha256": "ab"}}]}]
    base = cache_key("Qwen/Qwen3-VL-4B-Instruct", msgs, {"stream": True, "temperature": 0.2})
    assert base == cache_key("Qwen/Qwen3-VL-4B-Instruct", msgs, {"stream": False, "temperature": 0.2, "user": "bob"})
    assert base != cache_key("Qwen/Qwen3-VL-8B-Instruct", msgs, {"temperature": 0.2})
    assert base != cache_key("Qwen/Qwen3-VL-4B-Instruct", msgs, {"temperature": 0.3})
    other = [{"role": "user", "content": [{"type": "image_url", "image_url": {"sha256": "cd"}}]}]
    assert base != cache_key("Qwen/Qwen3-VL-4B-Instruct", other, {"temperature": 0.2})


def test_pinned_answers_survive_expiry(tmp_path: Path) -> None:
    async def run() -> None:
        cache = ResponseCache(CacheConfig(ttl=0.5), tmp_path)
        await cache.put(entry("a"))
        await cache.put(entry("b"))
        assert await cache.pin("a")
        await asyncio.sleep(0.7)
        assert (await cache.get("a")).text == "an answer"
        assert await cache.get("b") is None  # expired
        assert [e.key for e in await cache.entries()] == ["a"]
        assert (await cache.entries())[0].pinned
        cache.close()

    asyncio.run(run())


def test_search(tmp_path: Path) -> None:
    async def run() -> None:
        cache = ResponseCache(CacheConfig(), tmp_path)
        await cache.put(entry("a", question="read the invoice"))
        await cache.put(entry("b", question="describe the cat", text="a tabby cat"))
        assert [e.key for e in await cache.entries("invoice")] == ["a"]
        assert [e.key for e in await cache.entries("TABBY")] == ["b"]
        cache.close()

    asyncio.run(run())


def test_demo_set_export_import_round_trip(tmp_path: Path) -> None:
    async def run() -> bytes:
        src = ResponseCache(CacheConfig(), tmp_path / "src")
        await src.put(entry("a", text="first"))
        await src.put(entry("b", text="second"))
        data = await src.export()
        src.close()
        dst = ResponseCache(CacheConfig(ttl=0.2), tmp_path / "dst")
        assert await dst.import_set(data) == 2
        await asyncio.sleep(0.3)
        assert (await dst.get("b")).text == "second"  # imported answers are pinned
        dst.close()
        return data

    asyncio.run(run())


def test_a_broken_demo_set_imports_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        src = ResponseCache(CacheConfig(), tmp_path / "src")
        await src.put(entry("a"))
        data = await src.export() + b'{"key": "half"}\n'
        src.close()
        dst = ResponseCache(CacheConfig(), tmp_path / "dst")
        with pytest.raises(ValueError, match="line 3"):
            await dst.import_set(data)
        with pytest.raises(ValueError, match="not a tiergate demo set"):
            await dst.import_set(b"hello\n")
        assert await dst.entries() == []
        dst.close()

    asyncio.run(run())
