"""The Gradio UI as a script sees it (gradio_client against a real `tiergate serve`).

One gateway for the module, with a tier of real stand-in workers that boot in 2 s: the
first call waits through a cold start, a repeat is a cache hit, bad input is refused
clearly, and admin handlers refuse a session that has not logged in.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.conftest import GatewayProc, start_gateway, tier_toml, worker_command, write_config

TOKEN = "ui-client-test-token"
TIER = "uiclient"
BAD = "uibad"  # never boots, falls back to TIER (serves `ocr`)
DEAD = "uidead"  # never boots, no fallback (serves `grounding`)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("ui-client")
    failing = worker_command(boot=0.2, extra='"--fail-boot"')
    tiers = (tier_toml(TIER, idle="30s", command=worker_command(boot=2, tps=200))
             + tier_toml(BAD, fallback=TIER, command=failing) + tier_toml(DEAD, command=failing))
    routing = "\n".join(
        f'[routing.tasks.{task}]\nspeed = "{tier}"\nbalanced = "{tier}"\nquality = "{tier}"'
        for task, tier in (("caption", TIER), ("ocr", BAD), ("grounding", DEAD))
    )
    config = write_config(tmp, tiers, routing=routing)
    proc = start_gateway(config, redis_url=redis_url, env={"TIERGATE_ADMIN_TOKEN": TOKEN}, ui=True)
    yield proc
    # Not SIGTERM: every gradio_client keeps a heartbeat stream open and notices close() only at
    # the next heartbeat, so a graceful stop waits 15 s for them; its workers die with it anyway.
    proc.kill()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "picture.png"
    Image.new("RGB", (96, 64), (20, 140, 60)).save(path)
    return path


def client(gw: GatewayProc) -> Client:
    return Client(gw.url + "/", verbose=False, download_files=False)


def ask(c: Client, text: str, files: list[Path] | None = None) -> tuple[list, str, dict]:
    """All streamed outputs, then the final answer and meta."""
    job = c.submit(text, [handle_file(str(f)) for f in files or []] or None, "balanced", "auto", api_name="/chat")
    outputs = list(job)
    answer, meta = job.result()
    return outputs, answer, meta


def test_chat_endpoint_is_documented(gw: GatewayProc) -> None:
    info = client(gw).view_api(print_info=False, return_format="dict")
    assert "/chat" in info["named_endpoints"]
    params = [p["parameter_name"] for p in info["named_endpoints"]["/chat"]["parameters"]]
    assert params == ["text", "files", "mode", "task"]
    assert not any(name.startswith("/admin") for name in info["named_endpoints"])  # undocumented, not public


def test_cold_start_waits_streams_and_answers(gw: GatewayProc, image: Path) -> None:
    outputs, answer, meta = ask(client(gw), "What is in this picture?", [image])
    waiting = [m["waiting"] for _, m in outputs if isinstance(m, dict) and "waiting" in m]
    assert waiting, "no boot progress was streamed while the tier started"
    assert waiting[0]["tier"] == TIER and waiting[0]["stage"] in ("starting machine", "loading model")
    partial = [a for a, m in outputs if a and a != answer]
    assert partial, "the answer did not stream"
    assert "simulated worker" in answer and "96x64" in answer
    assert meta["tier"] == TIER and meta["cache"] == "miss" and meta["task"] == "caption"
    assert meta["wait_ms"] > 1000  # it waited for the 2 s boot


def test_repeat_is_a_cache_hit(gw: GatewayProc, image: Path, tmp_path: Path) -> None:
    copy = tmp_path / "same-picture-other-name.png"
    shutil.copy(image, copy)  # same bytes, so the same cache key
    _, first, _ = ask(client(gw), "What is in this picture?", [image])
    _, again, meta = ask(client(gw), "What is in this picture?", [copy])
    assert again == first
    assert meta["cache"] == "hit" and meta["wait_ms"] == 0 and meta["cost"] == 0


def test_bad_input_is_refused_clearly_and_the_app_keeps_working(gw: GatewayProc, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 20)
    with pytest.raises(AppError, match=r"could not be sent.*: corrupt\.png: image data is corrupt") as refused:
        ask(client(gw), "What is this?", [corrupt])
    assert "messages[" not in str(refused.value)  # in the user's words: the file's name, not an API path
    _, answer, _ = ask(client(gw), "Still there?")
    assert "simulated worker" in answer


def test_a_tier_that_cannot_start_falls_back(gw: GatewayProc) -> None:
    outputs, answer, meta = ask(client(gw), "Please read the text in this image aloud.")
    waiting = [m["waiting"] for _, m in outputs if isinstance(m, dict) and "waiting" in m]
    # While the fallback is waited for, the wait says why the routed tier was given up (when the
    # fallback is already up there is no wait after it); the final meta always says it.
    assert all(BAD in w["fallback"] for w in waiting if w["tier"] == TIER), waiting
    assert "simulated worker" in answer
    assert meta["task"] == "ocr" and meta["tier"] == TIER
    assert BAD in meta["fallback_reason"] and "exited with code 3" in meta["fallback_reason"]


def test_a_tier_that_cannot_start_without_fallback_says_why(gw: GatewayProc) -> None:
    with pytest.raises(AppError, match=rf"tier '{DEAD}' .* could not be started: .*exited with code 3"):
        ask(client(gw), "Detect the bounding box of the boat.")


def test_bad_mode_is_refused(gw: GatewayProc) -> None:
    with pytest.raises(AppError, match="not in the list of choices"):
        client(gw).predict("hi", None, "fastest", "auto", api_name="/chat")


ADMIN_CALLS = [
    ("/admin_stop", (TIER,)),
    ("/admin_start", (TIER,)),
    ("/admin_prewarm", (TIER,)),
    ("/admin_events", ()),
    ("/admin_config", ()),
    ("/admin_validate", ("[gateway]\n",)),
    ("/admin_save", ("broken = \n",)),
    ("/admin_costs", (7,)),
]


@pytest.mark.parametrize(("api_name", "args"), ADMIN_CALLS, ids=[a for a, _ in ADMIN_CALLS])
def test_admin_handlers_refuse_without_login(gw: GatewayProc, api_name: str, args: tuple) -> None:
    c = client(gw)
    with pytest.raises(AppError, match="Admin login required"):
        c.predict(*args, api_name=api_name)


def test_wrong_password_does_not_log_in(gw: GatewayProc) -> None:
    c = client(gw)
    c.predict("admin", "not-the-token", api_name="/admin_login")
    with pytest.raises(AppError, match="Admin login required"):
        c.predict(TIER, api_name="/admin_stop")


def test_admin_after_login(gw: GatewayProc) -> None:
    ask(client(gw), "Keep the tier up")  # make sure the tier is running
    assert gw.tiers()[TIER]["state"] == "ready"
    c = client(gw)
    c.predict("admin", TOKEN, api_name="/admin_login")
    problems = c.predict("[tiers.x]\ngpu = 1\nprice_per_hour = -1\n", api_name="/admin_validate")
    assert "line 2" in problems and "nothing was saved" in problems
    before = gw.config.read_text()
    problems, _ = c.predict("[gateway\n", api_name="/admin_save")
    assert "nothing was saved" in problems
    assert gw.config.read_text() == before
    message = c.predict(TIER, api_name="/admin_stop")
    assert "stopped" in message
    assert gw.tiers()[TIER]["state"] == "stopped"
    events = c.predict(api_name="/admin_events")
    assert any(row[3] == "stopped" and "admin" in row[5] for row in events["data"])


def test_api_routes_still_served_next_to_the_ui(gw: GatewayProc) -> None:
    with httpx.Client(base_url=gw.url, trust_env=False, timeout=30) as h:
        assert h.get("/healthz").status_code == 200
        assert "text/html" in h.get("/").headers["content-type"]
        assert any(m["id"] == TIER for m in h.get("/v1/models").json()["data"])
