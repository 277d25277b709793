"""`tiergate serve --workers 2` in a real browser: one port, two gateway processes, the UI works.

Gradio keeps a session's queue in one process; the UI lives in the first and the others pass
its requests on, so a person sees one app whichever process the kernel hands a connection to.
Each process is a full gateway on one shared Redis: a tier one of them started is ready for all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import GatewayProc, start_gateway, tier_toml, wait_for, worker_command, write_config
from tests.test_ui_browser import ARGS, CHROMIUM, LONG, last_bot, open_page, wait_text

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    """Two gateway processes on the embedded Redis their parent starts (no Redis URL)."""
    tmp = tmp_path_factory.mktemp("pool")
    proc = start_gateway(write_config(tmp, tier_toml("pooled", idle="1h", command=worker_command(boot=0.5, tps=400))),
                         ui=True, workers=2)
    yield proc
    proc.stop()


def test_the_ui_works_when_two_processes_share_the_port(pool: GatewayProc) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            pages = [open_page(browser, pool) for _ in range(3)]  # several connections: both processes get some
            for n, pg in enumerate(pages):
                pg.locator("#chat-input textarea").fill(f"Describe picture number {n}.")
                pg.keyboard.press("Enter")
            for n, pg in enumerate(pages):
                wait_for(lambda pg=pg, n=n: f"picture number {n}" in last_bot(pg), timeout=LONG / 1000,
                         what=f"page {n}'s own answer")
                wait_text(pg, "#answer-meta", "pooled")
        finally:
            browser.close()


def _gateway_processes(parent: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


def test_the_api_is_answered_by_both_processes_alike(pool: GatewayProc) -> None:
    assert len(_gateway_processes(pool.proc.pid)) == 2
    with httpx.Client(base_url=pool.url, timeout=60, trust_env=False) as c:
        for n in range(12):
            with httpx.Client(base_url=pool.url, timeout=60, trust_env=False) as fresh:  # a new connection each time
                r = fresh.post("/v1/chat/completions", json={"model": "pooled", "messages": [
                    {"role": "user", "content": f"q{n}"}], "tiergate": {"cache": False}})
                assert r.status_code == 200, r.text
        tiers = {t["name"]: t for t in c.get("/api/tiers").json()["tiers"]}
    assert tiers["pooled"]["starts"] == 1  # one start for both processes: they share the state
