"""The README's first command: `tiergate serve` with nothing but the package.

No config file, no Redis URL: the packaged tiers.toml and an embedded real Redis under
./.tiergate. A request wakes the right tier and a repeat is served from the cache.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import free_port, http, wait_for


def _closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_serve_on_the_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return http().get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=90, what="tiergate serve")
        assert (tmp_path / ".tiergate" / "redis.db").exists() or any((tmp_path / ".tiergate").iterdir())
        tiers = {t["name"]: t for t in http().get(url + "/api/tiers").json()["tiers"]}
        assert set(tiers) == {"light", "standard", "heavy"}
        assert {t["state"] for t in tiers.values()} == {"stopped"}  # nothing runs until a request comes

        body = {"model": "auto", "messages": [{"role": "user", "content": "Describe a sunset."}]}
        with httpx.Client(base_url=url, timeout=120, trust_env=False) as c:
            first = c.post("/v1/chat/completions", json=body)
            second = c.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        assert first.headers["x-tiergate-tier"] == "light"  # caption in balanced mode
        assert first.headers["x-tiergate-cache"] == "miss"
        assert int(first.headers["x-tiergate-wait-ms"]) >= 2500  # the stand-in boots for 3 s
        assert second.headers["x-tiergate-cache"] == "hit"
        assert "simulated" in first.json()["choices"][0]["message"]["content"]
        worker = json.loads((tmp_path / ".tiergate" / "pids" / "light-0.json").read_text())
        assert worker["port"] not in (18001, 18002, 18003)  # no fixed port a stranger might hold: chosen at start
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    # the gateway stopped its worker on the way out
    wait_for(lambda: _closed(worker["port"]), timeout=10, what="the light worker to stop with the gateway")
    assert not Path(f"/proc/{worker['pid']}").exists()
