"""GradioBackend against a real Gradio app with the upstream web demo's API (tests/standin_gradio_demo.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from router.backends.gradio import GradioBackend, _plain
from router.errors import UpstreamError, WorkerUnreachable

from .conftest import ROOT, free_port, wait_for


def start_demo(port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.standin_gradio_demo", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "stand-in exited"
        return _answers(f"http://127.0.0.1:{port}")

    wait_for(up, timeout=60, what="the stand-in Gradio demo")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    port = free_port()
    proc = start_demo(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # gradio_client ignores analytics_enabled=False
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def png_url(width: int = 64, height: int = 48) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_body(text: str = "what is this?") -> dict:
    content = [{"type": "image_url", "image_url": {"url": png_url()}}, {"type": "text", "text": text}]
    return {"model": "qwen3-vl-demo", "messages": [{"role": "user", "content": content}]}


async def collect(backend: GradioBackend, url: str, body: dict) -> list[bytes]:
    return [chunk async for chunk in backend.stream(url, body)]


async def pooled(backend: GradioBackend, url: str) -> int:
    for _ in range(100):
        if backend._idle.get(url):
            return len(backend._idle[url])
        await asyncio.sleep(0.05)
    raise AssertionError("no Client came back to the pool")


def content_of(chunks: list[bytes]) -> str:
    text = ""
    for chunk in chunks:
        payload = chunk.removeprefix(b"data: ").strip()
        if payload != b"[DONE]":
            text += json.loads(payload)["choices"][0]["delta"].get("content", "")
    return text


def test_complete_sees_the_image(demo_url: str) -> None:
    async def main() -> dict:
        backend = GradioBackend(timeout=60)
        try:
            return await backend.complete(demo_url, image_body())
        finally:
            await backend.aclose()

    out = asyncio.run(main())
    text = out["choices"][0]["message"]["content"]
    assert out["object"] == "chat.completion" and out["model"] == "qwen3-vl-demo"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert "I see 1 image(s) 64x48" in text and "you said: what is this?" in text
    assert "<br>" not in text and "\n" in text  # the demo's HTML is turned back into plain text
    assert out["usage"]["completion_tokens"] > 0


def test_stream_matches_complete_and_reuses_the_session(demo_url: str) -> None:
    async def main() -> tuple[list[bytes], dict, dict]:
        backend = GradioBackend(timeout=60)
        try:
            chunks = await collect(backend, demo_url, image_body())
            await pooled(backend, demo_url)  # the session is reset after the answer, then pooled
            again = await backend.complete(demo_url, image_body())  # that Client, with a cleared session
            return chunks, again, {"pooled": await pooled(backend, demo_url)}
        finally:
            await backend.aclose()

    chunks, full, info = asyncio.run(main())
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)
    parsed = [json.loads(c[6:]) for c in chunks[:-1]]
    assert all(p["object"] == "chat.completion.chunk" and p["model"] == "qwen3-vl-demo" for p in parsed)
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(parsed) > 5  # word by word, not one lump
    assert content_of(chunks) == full["choices"][0]["message"]["content"]
    assert "I see 1 image(s) 64x48" in content_of(chunks)  # not 2: the reused session was cleared
    assert info["pooled"] == 1


def test_multi_turn_reaches_the_app(demo_url: str) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url(32, 32)}},
                                         {"type": "text", "text": "first question"}]},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url(10, 20)}},
                                         {"type": "text", "text": "and this one?"}]},
        ],
    }

    async def main() -> str:
        backend = GradioBackend(timeout=60)
        try:
            return content_of(await collect(backend, demo_url, body))
        finally:
            await backend.aclose()

    text = asyncio.run(main())
    assert "I see 2 image(s) 32x32 10x20" in text
    for said in ("System: be brief", "User: first question", "Assistant: first answer", "User: and this one?"):
        assert said in text


def test_concurrent_conversations_do_not_mix(demo_url: str) -> None:
    async def main() -> list[dict]:
        backend = GradioBackend(timeout=60)
        try:
            bodies = [image_body(f"question {i}") for i in range(3)]
            return await asyncio.gather(*(backend.complete(demo_url, b) for b in bodies))
        finally:
            await backend.aclose()

    for i, out in enumerate(asyncio.run(main())):
        text = out["choices"][0]["message"]["content"]
        assert "I see 1 image(s) 64x48" in text and text.endswith(f"you said: question {i}")


def test_health(demo_url: str) -> None:
    async def main() -> tuple[bool, bool]:
        backend = GradioBackend()
        try:
            return await backend.health(demo_url), await backend.health(f"http://127.0.0.1:{free_port()}")
        finally:
            await backend.aclose()

    assert asyncio.run(main()) == (True, False)


def test_closed_port_fails_at_first_anext() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def main() -> None:
        backend = GradioBackend(timeout=10)
        try:
            chunks = backend.stream(url, image_body())
            with pytest.raises(UpstreamError, match=url):
                await chunks.__anext__()
            with pytest.raises(UpstreamError, match="unreachable"):
                await backend.complete(url, image_body())
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_missing_endpoint_is_an_upstream_error() -> None:
    """An ordinary Gradio app without the demo's endpoints: the error names the step."""
    async def main(url: str) -> None:
        backend = GradioBackend(timeout=10)
        try:
            with pytest.raises(UpstreamError, match=r"/add_text"):
                await backend.complete(url, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        finally:
            await backend.aclose()

    port = free_port()
    code = (
        "import gradio as gr\n"
        "with gr.Blocks() as d:\n"
        "    t = gr.Textbox(); t.submit(lambda s: s, t, t, api_name='echo')\n"
        f"d.queue().launch(server_name='127.0.0.1', server_port={port}, quiet=True)\n"
    )
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), timeout=60, what="a plain Gradio app")
        asyncio.run(main(url))
    finally:
        proc.terminate()
        proc.wait(10)


def test_text_only_request_and_image_only_refusal(demo_url: str) -> None:
    async def main() -> tuple[str, BaseException]:
        backend = GradioBackend(timeout=60)
        try:
            out = await backend.complete(demo_url, {"model": "m", "messages": [{"role": "user", "content": "hello"}]})
            image_only = {"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_url()}}]}]}
            try:
                await backend.stream(demo_url, image_only).__anext__()
            except Exception as exc:  # noqa: BLE001 - inspected below
                return out["choices"][0]["message"]["content"], exc
            raise AssertionError("an image-only request was accepted")
        finally:
            await backend.aclose()

    text, exc = asyncio.run(main())
    assert "I see 0 image(s)" in text and text.endswith("you said: hello")
    assert getattr(exc, "status", None) == 400


def test_a_dead_worker_drops_its_pooled_sessions() -> None:
    """The pooled Client fails to connect: it is dropped, one fresh try, then WorkerUnreachable."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_demo(port)

    async def main() -> str:
        nonlocal proc
        backend = GradioBackend(timeout=60)
        try:
            await backend.complete(url, image_body("before"))
            await pooled(backend, url)
            stop(proc)
            with pytest.raises(WorkerUnreachable, match=url):
                await backend.complete(url, image_body("while down"))
            assert not backend._idle.get(url)
            proc = start_demo(port)  # the worker is back (a restart)
            after = await backend.complete(url, image_body("after"))
            return after["choices"][0]["message"]["content"]
        finally:
            await backend.aclose()

    try:
        assert asyncio.run(main()).endswith("you said: after")
    finally:
        stop(proc)


def test_abandoned_stream_drops_its_session_and_temp_files(
    demo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    async def main() -> int:
        backend = GradioBackend(timeout=60)
        try:
            chunks = backend.stream(demo_url, image_body())
            await chunks.__anext__()
            await chunks.__anext__()
            await chunks.aclose()  # the client hung up mid-answer
            await asyncio.sleep(0.5)
            return sum(len(v) for v in backend._idle.values())
        finally:
            await backend.aclose()

    assert asyncio.run(main()) == 0  # its session may still be answering: never reused
    wait_for(lambda: not list(tmp_path.iterdir()), timeout=5, what="the temp files to go")


def test_plain_undoes_the_demo_html() -> None:
    shown = 'Here:<pre><code class="language-py"><br>x&nbsp;=&nbsp;a&lt;b<br></code></pre><br>done'
    assert _plain(shown) == "Here:\n```py\nx = a<b\n```\ndone"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/config", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
