"""GradioBackend against a real Gradio app with the upstream web demo's API (tests/standin_gradio_demo.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from router.backends.gradio import GradioBackend, plain_text, settled
from router.errors import UpstreamError, WorkerUnreachable

from .asgi_gateway import InProcessGateway
from .conftest import free_port, http, wait_for


def launch(blocks_factory: Callable[[], Any], port: int) -> Any:
    """Serve a Gradio app on a real port from a thread of this process (a subprocess costs a
    gradio import, 5-15 s, per start; the HTTP a client sees is the same)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    app = blocks_factory().queue()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}"), timeout=60, what="the Gradio app")
    return app


def start_demo(port: int) -> Any:
    from .standin_gradio_demo import build

    return launch(build, port)


def stop(app: Any) -> None:
    app.close()


# Gradio's own queue code, run in this process, warns about pandas deprecations: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    port = free_port()
    app = start_demo(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(app)


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
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    async def main() -> None:
        backend = GradioBackend(timeout=10)
        try:
            chunks = backend.stream(url, image_body(), tier="light")
            with pytest.raises(UpstreamError) as streamed:
                await chunks.__anext__()
            with pytest.raises(UpstreamError) as completed:
                await backend.complete(url, image_body())
            for exc in (streamed.value, completed.value):  # a private address is nobody's business outside
                assert "unreachable" in exc.message and "127.0.0.1" not in exc.message and str(port) not in exc.message
            assert "the light tier's web demo" in streamed.value.message
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_missing_endpoint_is_an_upstream_error() -> None:
    """An ordinary Gradio app without the demo's endpoints: the error names the step."""
    async def main(url: str) -> None:
        backend = GradioBackend(timeout=10)
        try:
            with pytest.raises(UpstreamError, match=r"taking the question"):
                await backend.complete(url, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        finally:
            await backend.aclose()

    def plain_app() -> Any:
        import gradio as gr

        with gr.Blocks() as app:
            box = gr.Textbox()
            box.submit(lambda text: text, box, box, api_name="echo")
        return app

    port = free_port()
    app = launch(plain_app, port)
    try:
        asyncio.run(main(f"http://127.0.0.1:{port}"))
    finally:
        stop(app)


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
            with pytest.raises(WorkerUnreachable, match="unreachable"):
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


def test_abandoned_stream_drops_its_session_and_temp_files(demo_url: str, tmp_path: Path) -> None:
    async def main() -> int:
        backend = GradioBackend(timeout=60, tmp_dir=str(tmp_path))
        try:
            chunks = backend.stream(demo_url, image_body("tell me more " * 300))  # a long answer: 900 words
            await chunks.__anext__()
            await chunks.__anext__()
            assert list(tmp_path.iterdir())  # the attachment is on disk while the answer runs
            await chunks.aclose()  # the client hung up mid-answer
            await asyncio.sleep(0.5)
            return sum(len(v) for v in backend._idle.values())
        finally:
            await backend.aclose()

    assert asyncio.run(main()) == 0  # its session may still be answering: never reused
    wait_for(lambda: not list(tmp_path.iterdir()), timeout=5, what="the temp files to go")


# --- the demo's HTML: undone exactly, nothing more ------------------------------------

# (what upstream's `_parse_text` shows, what the model wrote as far as it can be known)
SHOWN = [
    ('Here:<pre><code class="language-py"><br>x&nbsp;=&nbsp;a&lt;b<br></code></pre><br>done',
     "Here:\n```py\nx = a<b\n```\ndone"),
    ("AT&amp;T &lt;b&gt; \\` <i>x</i>", "AT&amp;T &lt;b&gt; \\` <i>x</i>"),  # outside code nothing was escaped
    ('<pre><code class="language-"><br>a&ast;b<br></code></pre>', "```\na*b\n```"),  # an answer that opens with code
    (('<pre><code class="language-sh"><br>&lt;&gt;&nbsp;&ast;&lowbar;&#45;&#46;&#33;&#40;&#41;&#36;\\`&amp;&copy;'
     "<br></code></pre>"), "```sh\n<> *_-.!()$`&amp;&copy;\n```"),  # every entity the demo writes, and no other
    ("a<br></code></pre>", "a\n</code></pre>"),  # a closing tag outside code is text
    ('<pre><code class="language-c"><br>\\\\`<br></code></pre>', "```c\n\\`\n```"),  # a backslash before a backtick
    ("", ""),
]


@pytest.mark.parametrize(("shown", "written"), SHOWN)
def test_plain_text_undoes_exactly_the_demo_html(shown: str, written: str) -> None:
    assert plain_text(shown) == written


def test_only_settled_text_is_streamed() -> None:
    assert settled("line one\nline two") == "line one\nline two"
    assert settled("line one\nstarts a fence ``") == "line one\n"  # the demo may still rewrite this line
    assert settled("a <bo") == ""  # may become a <box> the demo strips


TRICKY = (
    "Outside code: AT&amp;T &lt;b&gt; stays, as do * _ - . ! ( ) $, a `tick` and \\` too\n"
    "\n"
    "```html\n"
    '<p class="x">&copy; a_b * 2 - 1. Done! (yes) $5 `code` \\`</p>\n'
    "    indented\n"
    "```\n"
    "after: <i>raw</i>"
)


def test_answers_come_back_as_the_model_wrote_them(demo_url: str) -> None:
    """Through the stand-in's copy of upstream's `_parse_text`: only the dropped empty line is lost."""
    body = {"model": "m", "messages": [{"role": "user", "content": TRICKY}]}

    async def main() -> tuple[str, str]:
        backend = GradioBackend(timeout=60)
        try:
            complete = await backend.complete(demo_url, body)
            return complete["choices"][0]["message"]["content"], content_of(await collect(backend, demo_url, body))
        finally:
            await backend.aclose()

    complete, streamed = asyncio.run(main())
    assert complete.endswith("you said: " + TRICKY.replace("\n\n", "\n"))
    assert streamed == complete


def media_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def webp_bytes(width: int = 40, height: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (0, 90, 200)).save(buf, "WEBP")
    return buf.getvalue()


def mkv_bytes() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(5):
            out.mux(stream.encode(av.VideoFrame(32, 32, "yuv420p")))
        out.mux(stream.encode())
    return buf.getvalue()


def test_the_standin_refuses_webp_and_mkv_names_like_upstream(demo_url: str, tmp_path: Path) -> None:
    """The quirk the backend works around: on a host without /etc/mime.types the demo refuses these names."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(demo_url, verbose=False, download_files=False)
    try:
        for name, data in (("photo.webp", webp_bytes()), ("clip.mkv", mkv_bytes())):
            path = tmp_path / name
            path.write_bytes(data)
            with pytest.raises(AppError, match="Invalid file type"):
                client.submit([], handle_file(str(path)), api_name="/add_file").result(timeout=30)
    finally:
        client.close()


def test_webp_image_and_mkv_video_reach_the_demo(demo_url: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": media_url("image/webp", webp_bytes(40, 30))}},
               {"type": "video_url", "video_url": {"url": media_url("video/x-matroska", mkv_bytes())}},
               {"type": "text", "text": "what are these?"}]

    async def main() -> str:
        backend = GradioBackend(timeout=60)
        try:
            out = await backend.complete(demo_url, {"model": "m", "messages": [{"role": "user", "content": content}]})
            return out["choices"][0]["message"]["content"]
        finally:
            await backend.aclose()

    assert "I see 1 image(s) 40x30 and 1 video(s)" in asyncio.run(main())


def test_a_demo_failure_says_what_to_do_and_hides_the_address(demo_url: str) -> None:
    """The demo fails on bytes that are no image and, launched without show_error, says nothing useful."""
    broken = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": media_url("image/png", b"not a png at all")}},
        {"type": "text", "text": "what is this?"}]}]}

    async def main() -> UpstreamError:
        backend = GradioBackend(timeout=60)
        try:
            with pytest.raises(UpstreamError) as exc:
                await backend.complete(demo_url, broken, tier="heavy")
            return exc.value
        finally:
            await backend.aclose()

    error = asyncio.run(main())
    assert error.status == 502
    assert error.message.startswith("the heavy tier's web demo failed while answering")
    assert "show_error" in error.message and "log" in error.message  # where a person finds the cause
    assert "127.0.0.1" not in error.message and demo_url.rsplit(":", 1)[1] not in error.message


def test_the_gateway_serves_a_gradio_tier(demo_url: str, tmp_path: Path, redis_url: str) -> None:
    """Through the gateway's API: a WebP photo reaches the demo, and the answer is plain text."""
    config = tmp_path / "tiers.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\nredis_url = "{redis_url}"\n\n'
        '[tiers.gr_demo]\ngpu = "A100"\nprice_per_hour = 5.0\nbackend = "gradio"\nmodel = "qwen3-vl-demo"\n'
        f'[[tiers.gr_demo.instances]]\nprovider = "static"\nurl = "{demo_url}"\n'
    )
    gateway = InProcessGateway(config)
    try:
        body = {"model": "gr_demo", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": media_url("image/webp", webp_bytes(12, 34))}},
            {"type": "text", "text": "Here:\n```py\nx = a < b\n```"}]}]}
        answer = gateway.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-tiergate-tier"] == "gr_demo"
        text = answer.json()["choices"][0]["message"]["content"]
        assert "I see 1 image(s) 12x34" in text and text.endswith("you said: Here:\n```py\nx = a < b\n```")
    finally:
        gateway.close()


def _answers(url: str) -> bool:
    try:
        return http().get(url + "/config", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
