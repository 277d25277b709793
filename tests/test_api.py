"""The HTTP API as a script sees it: answers, headers, cache behaviour, errors."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import chat, tier_toml, wait_for, worker_command, write_config


def png(w: int = 64, h: int = 48) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_chat(url: str, text: str = "What is in this image?", **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return {"model": "auto", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def gw(tmp_path: Path, fresh_redis: str, gateway_factory):
    routing = "\n".join(
        f'[routing.tasks.{t}]\nspeed = "fast"\nbalanced = "fast"\nquality = "{q}"'
        for t, q in (("caption", "best"), ("ocr", "best"), ("grounding", "best"), ("html", "best"),
                     ("document", "best"), ("gui_agent", "best"), ("video", "best"), ("long_video", "best"))
    )
    tiers = tier_toml("fast", idle="1h", extra="max_queue = 5") + tier_toml(
        "best", price=5.0, idle="1h", command=worker_command(boot=0.3, tps=20))
    cfg = write_config(tmp_path, tiers, routing=routing, gateway='max_image_size = "100KiB"\nmax_attachments = 3')
    return gateway_factory(cfg, redis_url=fresh_redis)


def test_answer_headers_and_cache_hit(gw) -> None:
    with gw.client() as c:
        first = c.post("/v1/chat/completions", json=image_chat(png()))
        second = c.post("/v1/chat/completions", json=image_chat(png()))
        other = c.post("/v1/chat/completions", json=image_chat(png(65, 48)))
    assert first.status_code == 200, first.text
    assert first.headers["x-tiergate-tier"] == "fast"
    assert first.headers["x-tiergate-task"] == "caption"
    assert first.headers["x-tiergate-cache"] == "miss"
    assert int(first.headers["x-tiergate-wait-ms"]) > 0
    assert "64x48" in first.json()["choices"][0]["message"]["content"]
    assert second.headers["x-tiergate-cache"] == "hit"
    assert second.headers["x-tiergate-wait-ms"] == "0"
    assert second.json()["choices"] == first.json()["choices"]
    assert other.headers["x-tiergate-cache"] == "miss"  # other image bytes, other key
    assert "65x48" in other.json()["choices"][0]["message"]["content"]


def test_streamed_miss_then_streamed_hit(gw) -> None:
    body = chat("Stream me something.", stream=True)

    def run() -> tuple[httpx.Headers, str]:
        with gw.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            return r.headers, "".join(r.iter_text())

    h1, s1 = run()
    h2, s2 = run()
    assert h1["x-tiergate-cache"] == "miss" and h2["x-tiergate-cache"] == "hit"
    assert s1.rstrip().endswith("data: [DONE]") and s2.rstrip().endswith("data: [DONE]")

    def text(sse: str) -> str:
        import json

        out = []
        for line in sse.splitlines():
            if line.startswith("data: {"):
                for ch in json.loads(line[6:])["choices"]:
                    out.append(ch["delta"].get("content") or "")
        return "".join(out)

    assert text(s1) == text(s2) and "simulated" in text(s1)


def test_cache_bypass_and_mode_routing(gw) -> None:
    with gw.client() as c:
        short = {"max_tokens": 4}  # the `best` worker writes 20 tokens a second
        r = c.post("/v1/chat/completions", json=chat("hello", tiergate={"cache": False, "mode": "quality"}, **short))
        again = c.post("/v1/chat/completions", json=chat("hello", tiergate={"cache": False, "mode": "quality"}, **short))
        pinned = c.post("/v1/chat/completions", json={**chat("hello", **short), "model": "best"})
        ocr = c.post("/v1/chat/completions", json=chat("Please extract the text", tiergate={"mode": "quality"}, **short))
    assert r.headers["x-tiergate-cache"] == again.headers["x-tiergate-cache"] == "bypass"
    assert r.headers["x-tiergate-tier"] == "best"
    assert pinned.headers["x-tiergate-tier"] == "best"
    assert ocr.headers["x-tiergate-task"] == "ocr"


def test_identical_concurrent_requests_are_forwarded_once(gw) -> None:
    async def herd() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60, trust_env=False) as c:
            await c.post("/v1/chat/completions", json={**chat("warm up", max_tokens=2), "model": "best"})
            body = {**chat("the same question", max_tokens=12), "model": "best"}  # 0.6 s: the others arrive meanwhile
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(10)))

    responses = asyncio.run(herd())
    assert [r.status_code for r in responses] == [200] * 10
    assert sorted(r.headers["x-tiergate-cache"] for r in responses) == ["hit"] * 9 + ["miss"]
    assert len({r.json()["choices"][0]["message"]["content"] for r in responses}) == 1


def test_an_interrupted_stream_is_not_cached(gw) -> None:
    body = {**chat("cut me off", stream=True, max_tokens=30), "model": "best"}  # 1.5 s at 20 tokens a second
    with gw.client() as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            next(r.iter_bytes())  # read a little, then hang up
        r2 = c.post("/v1/chat/completions", json={**body, "stream": False})
    assert r2.headers["x-tiergate-cache"] == "miss"


def test_a_client_that_hangs_up_mid_stream_releases_the_gpu_at_once(tmp_path: Path, fresh_redis: str,
                                                                      gateway_factory) -> None:
    cfg = write_config(tmp_path, tier_toml("slow", idle="1h", command=worker_command(boot=0.3, tps=2)))
    gw = gateway_factory(cfg, redis_url=fresh_redis)  # 2 tokens a second: an answer streams for many seconds
    with gw.client() as c:
        with c.stream("POST", "/v1/chat/completions", json=chat("a long answer", stream=True)) as r:
            chunks = r.iter_bytes()  # held: dropping it would close the response at once
            next(chunks)
            time.sleep(0.5)
            assert gw.tiers()["slow"]["inflight"] == 1
        # the worker would stream for another 10 s or more: the lease goes with the client
        wait_for(lambda: gw.tiers()["slow"]["inflight"] == 0, timeout=5, what="the lease released")
        assert "broke off" not in gw.output()  # a hang-up is not logged as the worker's fault


def test_full_queue_is_a_429_with_retry_after(tmp_path: Path, fresh_redis: str, gateway_factory) -> None:
    cfg = write_config(tmp_path, tier_toml("tiny", extra="max_queue = 3", command=worker_command(boot=2)),
                       cache="enabled = false")
    gw = gateway_factory(cfg, redis_url=fresh_redis)

    async def herd() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60, trust_env=False) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=chat(f"q{i}")) for i in range(8)))

    responses = asyncio.run(herd())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 3 and 429 in codes
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["retry-after"]) >= 1
    assert "max_queue 3" in rejected.json()["error"]["message"]


def test_models_tiers_metrics_healthz(gw) -> None:
    with gw.client() as c:
        models = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert models == ["auto", "fast", "best"]
        c.post("/v1/chat/completions", json=chat("count me"))
        tiers = c.get("/api/tiers").json()["tiers"]
        fast = next(t for t in tiers if t["name"] == "fast")
        assert set(fast) >= {"name", "gpu", "state", "instances", "inflight", "queued", "last_active", "idle_timeout",
                             "starts", "gpu_seconds", "cost"}
        assert fast["instances"][0].keys() >= {"id", "provider", "state", "url"}
        assert fast["state"] == "ready" and fast["starts"] == 1
        wait_for(lambda: c.get("/api/tiers").json()["tiers"][0]["cost"] > 0, what="cost accrues")
        metrics = c.get("/metrics").text
    assert 'tiergate_tier_state{state="ready",tier="fast"} 1.0' in metrics
    assert 'tiergate_starts_total{tier="fast"} 1.0' in metrics
    assert "tiergate_gpu_seconds_total" in metrics and "tiergate_cache_total" in metrics
