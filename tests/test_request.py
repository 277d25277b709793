"""router/request.py: a request a worker would refuse is refused before any GPU starts.

Raw bodies go to the real gateway app (in process, over ASGI, with real Redis and tiers
of real stand-in workers that must never be started), the way a script would send them;
the rules themselves are also checked directly on `parse_json` and `prepare`.
"""

from __future__ import annotations

import base64
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from router.config import parse_config
from router.errors import BadRequest
from router.request import MAX_DEPTH, ChatRequest, parse_json, prepare

from .asgi_gateway import InProcessGateway
from .conftest import free_port, worker_command

ROUTES = "\n".join(
    f'[routing.tasks.{t}]\nspeed = "rq_vllm"\nbalanced = "rq_vllm"\nquality = "rq_vllm"'
    for t in ("caption", "ocr", "document", "grounding", "html", "gui_agent", "video", "long_video")
)


def tier(name: str, port: int, *, backend: str = "openai", fallback: str = "", boot: float = 0.3) -> str:
    lines = [
        f"[tiers.{name}]", 'gpu = "RTX 3060"', "price_per_hour = 1.0", 'idle_timeout = "1h"', 'boot_timeout = "30s"',
        "boot_seconds = 1", f'backend = "{backend}"', f'model = "test/{name}"',
    ]
    if fallback:
        lines.append(f'fallback = "{fallback}"')
    lines += [f"[[tiers.{name}.instances]]", 'provider = "local"', f"port = {port}",
              f"command = {worker_command(boot=boot)}", 'url = "http://127.0.0.1:{port}"']
    return "\n".join(lines) + "\n"


def config_text(data_dir: Path, redis_url: str, ports: dict[str, int]) -> str:
    return (
        f'[gateway]\ndata_dir = "{data_dir}"\nredis_url = "{redis_url}"\nmax_image_size = "100KiB"\nmax_attachments = 3\n\n'
        f"{ROUTES}\n\n"
        + tier("rq_vllm", ports["rq_vllm"], fallback="rq_demo")
        + tier("rq_demo", ports["rq_demo"], backend="gradio")
        + tier("rq_ok", ports["rq_ok"])
    )


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("rq_vllm", "rq_demo", "rq_ok")}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, redis_url: str, ports: dict[str, int]) -> Iterator[InProcessGateway]:
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("*rq_*"):  # this module's tiers start from nothing
        client.delete(key)
    client.close()
    tmp = tmp_path_factory.mktemp("request")
    path = tmp / "tiers.toml"
    path.write_text(config_text(tmp / "data", redis_url, ports))
    gateway = InProcessGateway(path)
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]):
    tmp = tmp_path_factory.mktemp("request-cfg")
    return parse_config(config_text(tmp, "redis://127.0.0.1:1/0", ports), str(tmp / "tiers.toml"))


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def png_url(width: int = 32, height: int = 24) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(text: str = "Describe a red square.", **extra) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_ask(url: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is in this image?"}]
    return {"model": "auto", "messages": [{"role": "user", "content": content}]}


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


# --- over HTTP: refused with a 4xx naming the field, and no tier started ---------------

REFUSED = [
    # (what, raw body or JSON-able body, status, param)
    ("array nested 1000 deep in a field", json.dumps(ask(metadata="@")).replace('"@"', "[" * 1000 + "]" * 1000).encode(),
     400, "metadata"),
    ("array nested 5000 deep as the body", b"[" * 5000 + b"]" * 5000, 400, None),
    ("not JSON", b'{"model": "auto", "messages": [', 400, None),
    ("a JSON array body", [ask()], 400, None),
    ("a body without messages", {"a": 1}, 400, "messages"),
    ("model is a list", {**ask(), "model": ["x"]}, 400, "model"),
    ("model is an empty list", {**ask(), "model": []}, 400, "model"),
    ("model is empty", {**ask(), "model": ""}, 400, "model"),
    ("model is a number", {**ask(), "model": 3}, 400, "model"),
    ("tiergate.mode is a list", ask(tiergate={"mode": []}), 400, "tiergate.mode"),
    ("tiergate.mode is empty", ask(tiergate={"mode": ""}), 400, "tiergate.mode"),
    ("tiergate.task is a list", ask(tiergate={"task": ["ocr"]}), 400, "tiergate.task"),
    ("tiergate is a list", ask(tiergate=[]), 400, "tiergate"),
    ("tiergate.cache is a string", ask(tiergate={"cache": "no"}), 400, "tiergate.cache"),
    ("max_tokens is negative", ask(max_tokens=-5), 400, "max_tokens"),
    ("max_tokens is a string", ask(max_tokens="abc"), 400, "max_tokens"),
    ("max_tokens is zero", ask(max_tokens=0), 400, "max_tokens"),
    ("max_tokens is a float", ask(max_tokens=5.5), 400, "max_tokens"),
    ("max_tokens is true", ask(max_tokens=True), 400, "max_tokens"),
    ("max_completion_tokens is zero", ask(max_completion_tokens=0), 400, "max_completion_tokens"),
    ("n is zero", ask(n=0), 400, "n"),
    ("n is a string", ask(n="3"), 400, "n"),
    ("n is over 128", ask(n=129), 400, "n"),
    ("temperature over 2", ask(temperature=5), 400, "temperature"),
    ("temperature is a string", ask(temperature="hot"), 400, "temperature"),
    ("top_p is zero", ask(top_p=0), 400, "top_p"),
    ("top_p over 1", ask(top_p=1.5), 400, "top_p"),
    ("presence_penalty over 2", ask(presence_penalty=3), 400, "presence_penalty"),
    ("frequency_penalty under -2", ask(frequency_penalty=-2.5), 400, "frequency_penalty"),
    ("seed is a string", ask(seed="42"), 400, "seed"),
    ("seed over int64", ask(seed=2**63), 400, "seed"),
    ("stop holds a number", ask(stop=["ok", 1]), 400, "stop[1]"),
    ("stop is an object", ask(stop={"a": 1}), 400, "stop"),
    ("stream is a string", ask(stream="yes"), 400, "stream"),
    ("stream_options without stream", ask(stream_options={"include_usage": True}), 400, "stream_options"),
    ("stream_options.include_usage is a string", ask(stream=True, stream_options={"include_usage": "yes"}), 400,
     "stream_options.include_usage"),
    ("response_format of an unknown type", ask(response_format={"type": "xml"}), 400, "response_format.type"),
    ("response_format is a string", ask(response_format="json"), 400, "response_format"),
    ("json_schema without a name", ask(response_format={"type": "json_schema", "json_schema": {"schema": {}}}), 400,
     "response_format.json_schema.name"),
    ("logprobs is a string", ask(logprobs="yes"), 400, "logprobs"),
    ("top_logprobs without logprobs", ask(top_logprobs=3), 400, "top_logprobs"),
    ("logit_bias key is not a token id", ask(logit_bias={"hello": 5}), 400, "logit_bias"),
    ("logit_bias over 100", ask(logit_bias={"42": 500}), 400, "logit_bias"),
    ("tools is an object", ask(tools={"type": "function"}), 400, "tools"),
    ("tool_choice names no tool", ask(tool_choice={"type": "function", "function": {"name": "f"}}), 400,
     "tool_choice"),
    ("a message is a string", {"model": "auto", "messages": ["hi"]}, 400, "messages[0]"),
    ("an image part without URL", {"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {}}, {"type": "text", "text": "hi"}]}]}, 400,
     "messages[0].content[0].image_url"),
    ("unknown tier", {**ask(), "model": "nope"}, 404, "model"),
    ("no messages", {"model": "auto", "messages": []}, 400, "messages"),
    ("an empty user message", ask(""), 400, "messages[0].content"),
    ("an unknown role", {"model": "auto", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("bad base64", image_ask("data:image/png;base64,@@@not-base64@@@"), 400, "messages[0].content[0].image_url"),
    ("not an image", image_ask(data_url("image/png", b"definitely not a png")), 400,
     "messages[0].content[0].image_url"),
    ("a PDF", image_ask(data_url("application/pdf", b"%PDF-1.4")), 415, "messages[0].content[0].image_url"),
    ("a file: URL", image_ask("file:///etc/passwd"), 400, "messages[0].content[0].image_url"),
    ("an image over the limit", image_ask(data_url("image/png", b"\x89PNG" + b"0" * 200_000)), 413,
     "messages[0].content[0].image_url"),
    ("too many attachments", {"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_url()}} for _ in range(4)]}]}, 400,
     "messages[0].content[3].image_url"),
    ("an unknown mode", ask(tiergate={"mode": "turbo"}), 400, "tiergate.mode"),
    ("an unknown task", ask(tiergate={"task": "dance"}), 400, "tiergate.task"),
    ("an unknown tiergate option", ask(tiergate={"speed": 1}), 400, "tiergate"),
    # the Gradio web demo's tier: what the demo cannot take
    ("web demo: no text", {"model": "rq_demo", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_url()}}]}]}, 400, "messages"),
    ("web demo: an http(s) image URL", {"model": "rq_demo", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "what is this?"}]}]}, 400, "messages[0].content[0].image_url"),
    ("web demo: n = 3", {**ask(), "model": "rq_demo", "n": 3}, 400, "n"),
    ("web demo: logprobs", {**ask(), "model": "rq_demo", "logprobs": True}, 400, "logprobs"),
]


@pytest.mark.parametrize(("what", "body", "status", "param"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_before_any_start(gw: InProcessGateway, ports: dict[str, int], what: str, body: object,
                                  status: int, param: str | None) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = gw.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["code"]
    assert error["param"] == param, error
    assert "127.0.0.1" not in error["message"] and "http://" not in error["message"]  # no internal address
    tiers = gw.tiers()
    for name in ("rq_vllm", "rq_demo"):
        assert tiers[name]["state"] == "stopped" and tiers[name]["starts"] == 0, tiers[name]
        assert not port_open(ports[name])


def test_n_answers_come_from_an_openai_tier_and_skip_the_cache(gw: InProcessGateway) -> None:
    """The control case: a valid request does start its tier; n = 2 gets two answers, like vLLM gives."""
    body = {"model": "rq_ok", "messages": [{"role": "user", "content": "Name two colours."}], "n": 2,
            "max_tokens": 40, "temperature": 0.8, "stop": None, "stream_options": None, "tiergate": None}
    first = gw.post("/v1/chat/completions", json=body)
    again = gw.post("/v1/chat/completions", json=body)
    assert first.status_code == again.status_code == 200, first.text
    choices = first.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[0]["message"]["content"] != choices[1]["message"]["content"]  # two samples, not one twice
    assert first.headers["x-tiergate-cache"] == again.headers["x-tiergate-cache"] == "bypass"
    assert gw.tiers()["rq_ok"]["starts"] == 1


# --- the rules, directly ------------------------------------------------------------


def test_parse_json_bounds_nesting_anywhere() -> None:
    ok = ask(metadata=nested(MAX_DEPTH - 2))  # the body itself and `metadata` are two more levels
    assert parse_json(json.dumps(ok).encode()) == ok
    with pytest.raises(BadRequest) as too_deep:
        parse_json(json.dumps(ask(metadata=nested(MAX_DEPTH))).encode())
    assert too_deep.value.param == "metadata" and f"deeper than {MAX_DEPTH}" in too_deep.value.message
    wide = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "metadata": [[i] for i in range(5000)]}
    assert parse_json(json.dumps(wide).encode()) == wide  # many brackets, little depth


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe", b'{"a": NaN}', b'"\\ud800"', b"{} {}"])
def test_parse_json_refuses_what_is_not_json(raw: bytes) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_json(raw)
    assert exc.value.code == "invalid_json" and exc.value.status == 400


def test_nulls_mean_not_set(cfg) -> None:
    body = {"model": None, "messages": [{"role": "user", "content": "hi"}], "stream": None, "n": None,
            "max_tokens": None, "temperature": None, "stop": None, "tiergate": None, "stream_options": None}
    req = prepare(body, cfg)
    assert (req.tier, req.stream, req.n, req.use_cache, req.pinned) == ("rq_vllm", False, 1, True, False)
    assert "tiergate" not in req.body and req.body["max_tokens"] is None  # unknown and null fields pass on as sent


def test_good_parameters_pass_through_untouched(cfg) -> None:
    body = ask(max_tokens=1, max_completion_tokens=4096, temperature=0, top_p=1, n=1, seed=-1, stop="END",
               presence_penalty=-2, frequency_penalty=2, logprobs=True, top_logprobs=20, logit_bias={"42": -100},
               stream=True, stream_options={"include_usage": True}, top_k=-1, min_p=0.1, repetition_penalty=1.1,
               response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
               tools=[{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
               tool_choice={"type": "function", "function": {"name": "look"}}, chat_template_kwargs={"x": 1},
               tiergate={"mode": "quality", "task": "auto", "cache": False})
    req = prepare(body, cfg)
    assert isinstance(req, ChatRequest) and req.stream and req.mode == "quality" and not req.use_cache
    assert req.body == {k: v for k, v in body.items() if k != "tiergate"}


def test_a_gradio_fallback_that_cannot_serve_is_named(cfg) -> None:
    """rq_vllm falls back to the web demo's tier, which cannot fetch an image URL: it must not be started for it."""
    body = {"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, {"type": "text", "text": "what?"}]}]}
    req = prepare(body, cfg)
    assert req.tier == "rq_vllm" and req.backend == "openai"
    assert set(req.unfit) == {"rq_demo"} and "data: URL" in req.unfit["rq_demo"]
    assert prepare(ask(), cfg).unfit == {}


def test_webp_and_matroska_are_taken_by_a_gradio_tier(cfg) -> None:
    """Not refused: the backend uploads them under names the demo knows (tests/test_backend_gradio.py)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "WEBP")
    webp = "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode()
    body = {"model": "rq_demo", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": webp}}, {"type": "text", "text": "what is this?"}]}]}
    assert prepare(body, cfg).backend == "gradio"

