"""The UI in a real browser (Playwright + Debian chromium) against a real `tiergate serve`.

One walk through what a user does, in order (the tests share one page): upload an image,
watch the cold start, read the streamed answer, ask again and get the cached badge, stop
an answer, replay from the presenter, log in to admin and see a broken config refused
with its line, stop the tier by hand and see an attachment warm it up, import a demo set
and see its Markdown and code rendered. Screenshots of every step go to tests/artifacts/
(gitignored) so a person can look at the page.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from tests.conftest import GatewayProc, start_gateway, tier_toml, wait_for, worker_command, write_config

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "ui-browser-test-token"
TIER = "uibrowser"
LONG = 60_000  # ms: generous, a cold start and a slow CI machine must fit

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")

MARKDOWN_ANSWER = (
    "Here is a **table** and some code:\n\n| x | sin(x) |\n|---|---|\n| 0 | 0.0 |\n| 1 | 0.84 |\n\n"
    "```python\nimport math\nprint(math.sin(1))\n```\n"
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("ui-browser")
    tiers = tier_toml(TIER, idle="30s", command=worker_command(boot=3, tps=20), extra="warm_on_intent = true")
    proc = start_gateway(write_config(tmp, tiers), redis_url=redis_url, env={"TIERGATE_ADMIN_TOKEN": TOKEN})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def page(gw: GatewayProc) -> Iterator[Page]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        pg = browser.new_page(viewport={"width": 1300, "height": 1000})
        pg.set_default_timeout(LONG)
        pg.goto(gw.url + "/")
        pg.wait_for_selector("#chatbot")
        pg.wait_for_selector("#tier-status table")
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("img")
    first = d / "harbor.png"
    Image.new("RGB", (120, 80), (30, 90, 200)).save(first)
    again = d / "harbor-again.png"  # same bytes, other name: a browser ignores re-picking the same file
    shutil.copy(first, again)
    other = d / "meadow.png"
    Image.new("RGB", (90, 90), (40, 160, 70)).save(other)
    return first, again, other


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-answer demo set whose answer is Markdown with a table and a code block."""
    entry = {"key": "f" * 64, "tier": TIER, "task": "html", "model": "test", "question": "Plot a sine table",
             "created": time.time(), "thumbnail": "", "pinned": False,
             "response": {"id": "x", "object": "chat.completion", "model": "test",
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": MARKDOWN_ANSWER}}]}}
    path = tmp_path_factory.mktemp("demo") / "demo.jsonl"
    path.write_text(json.dumps({"tiergate_demo_set": 1, "count": 1}) + "\n" + json.dumps(entry) + "\n")
    return path


def shot(pg: Page, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def text_of(pg: Page, selector: str) -> str:
    return pg.locator(selector).inner_text()


def wait_text(pg: Page, selector: str, needle: str) -> None:
    pg.wait_for_function("([s, n]) => (document.querySelector(s)?.innerText || '').includes(n)", arg=[selector, needle])


def attach(pg: Page, image: Path) -> None:
    pg.locator("#chat-input input[type=file]").set_input_files(str(image))
    pg.wait_for_selector("#chat-input img")  # uploaded: it shows as a thumbnail in the input


def send(pg: Page, text: str, image: Path | None = None) -> None:
    if image is not None:
        attach(pg, image)
    pg.locator("#chat-input textarea").fill(text)
    pg.locator("#submit-btn").click()


def last_bot(pg: Page) -> str:
    bots = pg.locator("#chatbot .bot")
    return bots.last.inner_text() if bots.count() else ""


def test_01_page_layout(page: Page) -> None:
    for el in ("chatbot", "chat-input", "mode", "task", "tier-status", "answer-meta", "tab-chat-button",
               "tab-presenter-button", "tab-admin-button"):
        assert page.locator(f"#{el}").count() == 1, el
    assert TIER in text_of(page, "#tier-status") and "stopped" in text_of(page, "#tier-status")
    for label in ("Submit (发送)", "Regenerate (重试)", "Clear History (清除历史)", "Stop (停止)"):
        assert page.get_by_role("button", name=label).count() == 1, label
    shot(page, "01-home")


def test_02_cold_start_progress_then_streamed_answer(page: Page, images: tuple) -> None:
    send(page, "What is in this picture?", images[0])
    wait_text(page, "#chatbot", "Starting the")
    assert "elapsed" in last_bot(page)
    shot(page, "02-cold-start")
    lengths = set()
    deadline = time.monotonic() + LONG / 1000
    while "cache miss" not in text_of(page, "#answer-meta") and time.monotonic() < deadline:
        if "simulated worker" in last_bot(page):
            lengths.add(len(last_bot(page)))
        time.sleep(0.1)
    answer = last_bot(page)
    assert "simulated worker" in answer and "120x80" in answer
    assert len(lengths) >= 3, "the answer did not stream token by token"
    meta = text_of(page, "#answer-meta")
    assert TIER in meta and "waited" in meta and "cost" in meta
    shot(page, "03-answer")


def test_03_repeat_shows_the_cache_badge(page: Page, images: tuple) -> None:
    page.locator("#clear-btn").click()
    page.wait_for_function("!document.querySelector('#answer-meta').innerText.trim()")
    send(page, "What is in this picture?", images[1])
    wait_text(page, "#answer-meta", "cache hit")
    assert page.locator("#answer-meta .tg-hit").count() == 1
    assert "from cache" in last_bot(page)
    shot(page, "04-cache-hit")


def test_04_stop_ends_a_running_answer(page: Page, gw: GatewayProc) -> None:
    send(page, "Tell me a long story about harbors, lighthouses and the sea at night.")
    wait_for(lambda: "simulated worker" in last_bot(page), timeout=LONG / 1000, what="the answer to start streaming")
    page.locator("#stop-btn").click()
    wait_for(lambda: "Stopped." in last_bot(page), timeout=20, what="the stopped mark")
    time.sleep(1.5)  # nothing that was in flight may overwrite it
    assert "Stopped." in last_bot(page) and "reply fingerprint" not in last_bot(page)
    assert page.locator("#chat-input textarea").is_enabled()
    wait_for(lambda: gw.tiers()[TIER]["inflight"] == 0, timeout=20, what="the lease to be released after Stop")
    shot(page, "05-stopped")


def test_05_presenter_replays_without_gpu(page: Page, demo_set: Path) -> None:
    page.locator("#tab-presenter-button").click()
    page.wait_for_selector("#presenter-gallery button.thumbnail-item")
    page.get_by_text("Demo set: export / import").click()
    page.locator("#presenter-import input[type=file]").set_input_files(str(demo_set))
    wait_text(page, "#presenter-message", "needs admin login")  # not logged in yet: refused
    shot(page, "06-presenter")
    page.locator("#presenter-gallery button.thumbnail-item").first.click()
    wait_text(page, "#presenter-preview", "Q:")
    page.locator("#presenter-replay").click()
    wait_text(page, "#answer-meta", "replayed from cache")
    page.wait_for_selector("#chatbot", state="visible")  # switched back to the chat
    shot(page, "07-replayed")


def test_06_admin_login_and_config_validation(page: Page) -> None:
    page.locator("#tab-admin-button").click()
    page.locator("#admin-password input").fill("wrong")
    page.locator("#admin-login-btn").click()
    wait_text(page, "#admin-login-msg", "Wrong")
    assert not page.locator("#admin-panel").is_visible()
    page.locator("#admin-password input").fill(TOKEN)
    page.locator("#admin-login-btn").click()
    page.wait_for_selector("#admin-panel", state="visible")
    wait_text(page, "#admin-events", "ready")
    shot(page, "08-admin")
    page.get_by_role("tab", name="Config").click()
    wait_text(page, "#admin-config-code", "[tiers.")
    page.locator("#admin-config-code .cm-content").click()
    page.keyboard.press("Control+End")
    page.keyboard.type(f"\n[tiers.{TIER}.bogus]\nfoo = 1\n")
    page.locator("#admin-validate").click()
    wait_text(page, "#admin-problems", "line")
    problems = text_of(page, "#admin-problems")
    assert "unknown key" in problems and "nothing was saved" in problems
    shot(page, "09-admin-validation")
    page.get_by_role("tab", name="Costs").click()
    wait_text(page, "#admin-cost-summary", "all tiers")
    shot(page, "10-admin-costs")


def test_07_admin_stop_then_attachment_warms_the_tier(page: Page, gw: GatewayProc, images: tuple) -> None:
    page.get_by_role("tab", name="Tiers").click()
    page.locator("#admin-stop").click()
    wait_text(page, "#admin-tier-msg", "stopped")
    assert gw.tiers()[TIER]["state"] == "stopped"
    page.locator("#tab-chat-button").click()
    attach(page, images[2])  # not sent: warm_on_intent boots the tier the question would go to
    wait_for(lambda: gw.tiers()[TIER]["state"] in ("starting", "ready"), timeout=20, what="warm-up on intent")
    wait_text(page, "#tier-status", "starting")
    shot(page, "11-warm-on-intent")


def test_08_import_a_demo_set_and_render_markdown(page: Page, tmp_path: Path, demo_set: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text("this is not a demo set\n")
    page.locator("#tab-presenter-button").click()
    page.locator("#presenter-import input[type=file]").set_input_files(str(broken))
    wait_text(page, "#presenter-message", "Not imported")
    page.locator("#presenter-import input[type=file]").set_input_files(str(demo_set))
    wait_text(page, "#presenter-message", "Imported 1")
    page.locator("#presenter-export-pinned").click()
    wait_text(page, "#presenter-export", ".jsonl")
    shot(page, "12-imported")
    search = page.locator("#presenter-search textarea, #presenter-search input").first
    search.fill("sine")
    search.press("Enter")
    wait_text(page, "#presenter-message", "matching")
    page.locator("#presenter-gallery button.thumbnail-item").first.click()
    wait_text(page, "#presenter-preview", "sine")
    page.locator("#presenter-replay").click()
    wait_text(page, "#answer-meta", "replayed from cache")
    bot = page.locator("#chatbot .bot").last
    bot.locator("table").wait_for()
    page.wait_for_function(  # the chat followed the replay down to its last message
        "(w => w && w.scrollTop + w.clientHeight >= w.scrollHeight - 5)(document.querySelector('#chatbot .bubble-wrap'))")
    assert bot.locator("pre code").count() >= 1 and "math.sin" in bot.locator("pre code").first.inner_text()
    shot(page, "13-markdown-replay")
