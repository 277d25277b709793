"""Tests for the simulated GPU worker, run as a real subprocess over real HTTP.

The gateway's own tests and the benchmark rely on this worker behaving like a
vLLM machine (closed port while booting, OpenAI wire format, clean SIGTERM), so
these tests check exactly that from the outside.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
Spawn = Callable[..., tuple[subprocess.Popen[bytes], int, Path]]


def free_port() -> int:
    """A port that was free a moment ago (good enough on a test machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> float:
    """Block until the worker accepts connections; returns when that happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return time.monotonic()
        assert proc.poll() is None, f"worker exited early with code {proc.returncode}"
        time.sleep(0.02)
    raise AssertionError(f"port {port} never opened")


def wait_for_text(path: Path, text: str, timeout: float = 5.0) -> bool:
    """True once `text` shows up in the file (the worker logs asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start workers as subprocesses; every one is killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int, Path]:
        port = free_port()
        stderr_path = tmp_path / f"worker-{port}.err"
        full_env = {k: v for k, v in os.environ.items() if k != "TIERGATE_INSTANCE_ID"}
        full_env.update({"PYTHONPATH": str(REPO), **(env or {})})
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "--port", str(port), *flags],
                cwd=REPO,
                env=full_env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        procs.append(proc)
        return proc, port, stderr_path

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One unpaced worker shared by the protocol tests (keeps the file fast)."""
    port = free_port()
    stderr = (tmp_path_factory.mktemp("worker") / "stderr").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "--port", str(port), "--tokens-per-second", "0"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "TIERGATE_INSTANCE_ID": "i-shared"},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        stderr.close()


def png_data_url(width: int = 640, height: int = 480) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mp4_bytes(frames: int = 10, fps: int = 10) -> bytes:
    """A real, tiny MP4 (64x48, frames/fps seconds) encoded with PyAV."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame(64, 48, "yuv420p")))
        container.mux(stream.encode())
    return buf.getvalue()


def image_messages() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are helpful."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": png_data_url()}},
            ],
        },
    ]


def chat(base_url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=10)


def stream_events(base_url: str, **body: Any) -> list[Any]:
    """POST with stream=true and return the parsed `data:` payloads ('[DONE]' kept as a string)."""
    events: list[Any] = []
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    for block in raw.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            payload = block[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# ---------------------------------------------------------------- lifecycle


def test_port_closed_while_booting_then_open(spawn: Spawn) -> None:
    started = time.monotonic()
    proc, port, stderr = spawn("--boot-seconds", "0.5")
    assert not port_open(port), "port must stay closed while the model 'loads'"
    opened = wait_for_port(port, proc)
    assert opened - started >= 0.5
    assert wait_for_text(stderr, f"listening on http://127.0.0.1:{port}")


def test_sigterm_exits_zero_quickly(spawn: Spawn) -> None:
    proc, port, stderr = spawn()
    wait_for_port(port, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=3) == 0
    assert "stopped" in stderr.read_text()


def test_sigterm_ends_inflight_stream_and_exits_zero(spawn: Spawn) -> None:
    proc, port, _ = spawn("--tokens-per-second", "5")
    wait_for_port(port, proc)
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=10) as answer:
        chunks = answer.iter_raw()
        next(chunks)  # the stream is under way
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = b"".join(chunks)
    assert b"[DONE]" not in rest, "an interrupted stream must not pretend to be complete"
    assert proc.wait(timeout=3) == 0
    assert time.monotonic() - started < 2


def test_sigterm_during_boot_exits_zero(spawn: Spawn) -> None:
    proc, port, stderr = spawn("--boot-seconds", "30")
    assert wait_for_text(stderr, "loading model", timeout=30)  # the model is "loading": the boot is under way
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert "stopped during boot" in stderr.read_text()
    assert not port_open(port)


def test_sigterm_while_the_server_is_still_being_imported_exits_zero(spawn: Spawn) -> None:
    """Issue #10 defect 5: a SIGTERM before the server's own handler exists (it takes its imports, a few
    hundred ms, more on a loaded machine) used to kill the worker with status -15 about 1 run in 8."""
    proc, port, stderr = spawn("--boot-seconds", "30")
    assert wait_for_text(stderr, "starting", timeout=30)  # printed before the heavy imports begin
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    log = stderr.read_text()
    assert "stopped during boot" in log and "listening" not in log
    assert not port_open(port)


def test_fail_boot_exits_nonzero_with_message(spawn: Spawn) -> None:
    proc, port, stderr = spawn("--boot-seconds", "0.2", "--fail-boot")
    assert proc.wait(timeout=10) == 3
    assert "failed to load model" in stderr.read_text()
    assert not port_open(port)


def test_ready_callback_posts_with_bearer_token(spawn: Spawn) -> None:
    received: list[dict[str, Any]] = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "auth": self.headers["Authorization"], "body": json.loads(body)})
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    gateway = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=gateway.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{gateway.server_port}/api/instances/i-123/ready"
        _, port, _ = spawn(
            "--boot-seconds",
            "0.3",
            "--ready-url",
            url,
            "--instance-id",
            "i-123",
            env={"TIERGATE_CALLBACK_TOKEN": "s3cret"},
        )
        assert arrived.wait(timeout=15), "worker never announced readiness"
        assert port_open(port), "ready must only be announced once the port is open"
    finally:
        gateway.shutdown()
        gateway.server_close()
    assert received[0]["path"] == "/api/instances/i-123/ready"
    assert received[0]["auth"] == "Bearer s3cret"
    assert received[0]["body"]["instance_id"] == "i-123"
    assert received[0]["body"]["port"] == port


def test_tokens_are_paced(spawn: Spawn) -> None:
    proc, port, _ = spawn("--tokens-per-second", "40")
    wait_for_port(port, proc)
    started = time.monotonic()
    events = stream_events(f"http://127.0.0.1:{port}", messages=[{"role": "user", "content": "hi"}], max_tokens=12)
    assert time.monotonic() - started >= 12 / 40 * 0.9
    assert events[-1] == "[DONE]"


# ----------------------------------------------------------------- protocol


def test_health_and_models(base_url: str) -> None:
    health = httpx.get(f"{base_url}/health")
    assert health.status_code == 200 and health.headers["x-tiergate-instance"] == "i-shared"
    models = httpx.get(f"{base_url}/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["Qwen/Qwen3-VL-4B-Instruct"]


def test_non_stream_is_deterministic_and_describes_image(base_url: str) -> None:
    first = chat(base_url, model="anything", messages=image_messages())
    second = chat(base_url, model="anything", messages=image_messages())
    assert first.status_code == second.status_code == 200
    body = first.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    assert content == second.json()["choices"][0]["message"]["content"]
    assert "simulated" in content
    assert "640x480 PNG" in content
    assert "What is in this picture?" in content
    assert 30 <= body["usage"]["completion_tokens"] <= 80
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_different_input_gives_different_answer(base_url: str) -> None:
    one = chat(base_url, messages=[{"role": "user", "content": "first question"}]).json()
    two = chat(base_url, messages=[{"role": "user", "content": "second question"}]).json()
    assert one["choices"][0]["message"]["content"] != two["choices"][0]["message"]["content"]


def test_video_and_image_url_are_described(base_url: str) -> None:
    video = mp4_bytes()
    content = [
        {"type": "image_url", "image_url": {"url": "http://example.invalid/cat.jpg"}},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(video).decode()}},
        {"type": "text", "text": "Describe."},
    ]
    answer = chat(base_url, messages=[{"role": "user", "content": content}]).json()["choices"][0]["message"]["content"]
    assert "an image by URL" in answer
    assert f"1 video (MP4, {len(video)} bytes, 1.0 s, 64x48)" in answer


def test_stream_matches_non_stream(base_url: str) -> None:
    messages = image_messages()
    expected = chat(base_url, messages=messages).json()["choices"][0]["message"]["content"]
    events = stream_events(base_url, messages=messages, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == expected
    assert len(chunks) > 10, "content should arrive token by token"


def test_max_tokens_caps_output(base_url: str) -> None:
    messages = [{"role": "user", "content": "Tell me a long story"}]
    full = chat(base_url, messages=messages).json()["choices"][0]["message"]["content"]
    capped = chat(base_url, messages=messages, max_tokens=5).json()
    assert capped["choices"][0]["finish_reason"] == "length"
    assert capped["usage"]["completion_tokens"] == 5
    text = capped["choices"][0]["message"]["content"]
    assert len(text.split()) == 5 and full.startswith(text)

    events = stream_events(base_url, messages=messages, max_tokens=5)
    deltas = [e["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert "".join(d for d in deltas if d) == text
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_bad_requests_are_openai_style_400(base_url: str) -> None:
    malformed = httpx.post(
        f"{base_url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    error = malformed.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json" and error["message"]

    for body in ({}, {"messages": []}, {"messages": [{"role": "robot", "content": "hi"}]}):
        answer = chat(base_url, **body)
        assert answer.status_code == 400, body
        assert answer.json()["error"]["type"] == "invalid_request_error"

    bad_limit = chat(base_url, messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert bad_limit.status_code == 400 and bad_limit.json()["error"]["param"] == "max_tokens"


def test_unknown_route_is_json_404(base_url: str) -> None:
    answer = httpx.get(f"{base_url}/v1/nope")
    assert answer.status_code == 404
    assert "error" in answer.json()
    assert answer.headers["x-tiergate-instance"] == "i-shared"  # errors say who answered, too


def test_every_answer_shows_the_instance_id(spawn: Spawn) -> None:
    """A gateway tells its own worker from a stranger on the same port by this header."""
    proc, port, _ = spawn(env={"TIERGATE_INSTANCE_ID": "light-0"})
    wait_for_port(port, proc)
    url = f"http://127.0.0.1:{port}"
    answers = [httpx.get(f"{url}/health"), httpx.get(f"{url}/v1/models"), chat(url, messages=[]),
               chat(url, messages=[{"role": "user", "content": "hi"}])]
    assert [a.headers.get("x-tiergate-instance") for a in answers] == ["light-0"] * 4
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=10,
                      json={"messages": [{"role": "user", "content": "hi"}], "stream": True}) as streamed:
        assert streamed.headers["x-tiergate-instance"] == "light-0"

    anonymous, port2, _ = spawn()  # started by hand, without the variable: the header is there, empty
    wait_for_port(port2, anonymous)
    assert httpx.get(f"http://127.0.0.1:{port2}/health").headers["x-tiergate-instance"] == ""


def test_n_gives_n_different_answers_like_vllm(base_url: str) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    body = chat(base_url, messages=messages, n=3).json()
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    texts = [c["message"]["content"] for c in choices]
    assert len(set(texts)) == 3  # samples differ
    assert texts[0] == chat(base_url, messages=messages).json()["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == sum(len(t.split()) for t in texts)

    capped = chat(base_url, messages=messages, n=3, max_tokens=12).json()
    assert capped["usage"]["completion_tokens"] == 3 * 12  # the limit is per answer
    assert [c["finish_reason"] for c in capped["choices"]] == ["length"] * 3

    events = stream_events(base_url, messages=messages, n=3)
    assert events[-1] == "[DONE]"
    streamed = {i: "" for i in range(3)}
    finished = {}
    for event in events[:-1]:
        for c in event["choices"]:
            streamed[c["index"]] += c["delta"].get("content") or ""
            if c["finish_reason"]:
                finished[c["index"]] = c["finish_reason"]
    assert [streamed[i] for i in range(3)] == texts and finished == {0: "stop", 1: "stop", 2: "stop"}


def test_refusals_name_the_field_like_vllm(base_url: str) -> None:
    no_stream = chat(base_url, messages=[{"role": "user", "content": "hi"}], stream_options={"include_usage": True})
    assert no_stream.status_code == 400 and no_stream.json()["error"]["param"] == "stream_options"
    for n in (0, "2", 1000):
        assert chat(base_url, messages=[{"role": "user", "content": "hi"}], n=n).json()["error"]["param"] == "n"
    part = chat(base_url, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}])
    assert part.status_code == 400 and part.json()["error"]["param"] == "messages[0].content[0].image_url"
    image_shorthand = chat(base_url, messages=[{"role": "user", "content": [
        {"type": "image", "image": png_data_url(20, 10)}, {"type": "text", "text": "and this?"}]}])
    assert "20x10 PNG" in image_shorthand.json()["choices"][0]["message"]["content"]  # the walker's part types
