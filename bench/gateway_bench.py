"""Warm-path overhead, cache hits, throughput, a cold herd, and gateway memory.

Prints figures; it asserts nothing. Direct and through-gateway requests are interleaved in
one run against the same stand-in worker, so a noisy machine affects both alike.

    .venv/bin/python bench/gateway_bench.py [--requests 400] [--concurrency 32] [--herd 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import free_port, start_gateway, wait_for

BODY = {"model": "auto", "messages": [{"role": "user", "content": "Describe a red square."}], "max_tokens": 16}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def write_config(tmp: Path, worker_url: str) -> Path:
    herd_port = free_port()
    text = f"""
[gateway]
data_dir = "{tmp / 'data'}"

[routing.tasks.caption]
speed = "warm"
balanced = "warm"
quality = "warm"

[tiers.warm]
gpu = "RTX 4090D"
price_per_hour = 2.8
model = "bench"

[[tiers.warm.instances]]
provider = "static"
url = "{worker_url}"

[tiers.cold]
gpu = "RTX 3060"
price_per_hour = 1.0
boot_seconds = 2
max_queue = 1000
model = "bench-cold"

[[tiers.cold.instances]]
provider = "local"
port = {herd_port}
command = ["tiergate", "worker", "--port", "{{port}}", "--boot-seconds", "2", "--tokens-per-second", "0"]
url = "http://127.0.0.1:{{port}}"
"""
    path = tmp / "tiers.toml"
    path.write_text(text)
    return path


async def one(client: httpx.AsyncClient, url: str, body: dict) -> float:
    t0 = time.perf_counter()
    r = await client.post(url, json=body)
    r.raise_for_status()
    return (time.perf_counter() - t0) * 1000


async def sequential_ab(direct: str, gateway: str, n: int) -> tuple[list[float], list[float]]:
    """Alternate direct and gateway requests so drift on the machine hits both equally."""
    d, g = [], []
    nocache = {**BODY, "tiergate": {"cache": False}}
    async with httpx.AsyncClient(timeout=60, trust_env=False) as c:
        for _ in range(20):  # warm both connection pools
            await one(c, direct, BODY)
            await one(c, gateway, nocache)
        for _ in range(n):
            d.append(await one(c, direct, BODY))
            g.append(await one(c, gateway, nocache))
    return d, g


async def cache_hits(gateway: str, n: int) -> list[float]:
    body = {**BODY, "messages": [{"role": "user", "content": "cached question"}]}
    async with httpx.AsyncClient(timeout=60, trust_env=False) as c:
        await one(c, gateway, body)
        return [await one(c, gateway, body) for _ in range(n)]


async def throughput(url: str, body: dict, concurrency: int, total: int) -> float:
    async with httpx.AsyncClient(timeout=60, trust_env=False, limits=httpx.Limits(max_connections=concurrency)) as c:
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one(c, url, body)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - t0)


async def herd(gateway: str, n: int, pid: int) -> tuple[float, int, float]:
    peak = 0.0
    body = {**BODY, "model": "cold", "tiergate": {"cache": False}}

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    async with httpx.AsyncClient(timeout=120, trust_env=False, limits=httpx.Limits(max_connections=n)) as c:
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(c.post(gateway, json=body) for _ in range(n)))
        took = time.perf_counter() - t0
    sampler.cancel()
    ok = sum(r.status_code == 200 for r in rs)
    return took, ok, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--herd", type=int, default=200)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tiergate-bench-"))
    wport = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "worker", "--port", str(wport), "--tokens-per-second", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    direct = f"http://127.0.0.1:{wport}/v1/chat/completions"
    wait_for(lambda: _up(f"http://127.0.0.1:{wport}/health"), what="worker")
    gw = start_gateway(write_config(tmp, f"http://127.0.0.1:{wport}"), name="bench")
    gateway = gw.url + "/v1/chat/completions"
    try:
        time.sleep(2)
        idle_rss = rss_mb(gw.proc.pid)
        d, g = asyncio.run(sequential_ab(direct, gateway, args.requests))
        hits = asyncio.run(cache_hits(gateway, args.requests))
        nocache = {**BODY, "tiergate": {"cache": False}}
        rounds = []
        for _ in range(3):  # interleave the throughput runs too
            rd = asyncio.run(throughput(direct, BODY, args.concurrency, args.requests))
            rg = asyncio.run(throughput(gateway, nocache, args.concurrency, args.requests))
            rounds.append((rd, rg))
        herd_s, herd_ok, herd_rss = asyncio.run(herd(gateway, args.herd, gw.proc.pid))
        tiers = {t["name"]: t for t in httpx.get(gw.url + "/api/tiers", trust_env=False).json()["tiers"]}
    finally:
        gw.proc.terminate()
        gw.proc.wait(30)
        worker.terminate()
        worker.wait(10)

    added = [b - a for a, b in zip(d, g, strict=True)]
    rd = statistics.median(r[0] for r in rounds)
    rg = statistics.median(r[1] for r in rounds)
    print(f"# tiergate gateway benchmark — {datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print()
    print("| measure | result | target |")
    print("|---|---|---|")
    print(f"| direct latency, median / p99 | {statistics.median(d):.2f} / {pct(d, 99):.2f} ms | |")
    print(f"| through gateway, median / p99 | {statistics.median(g):.2f} / {pct(g, 99):.2f} ms | |")
    print(f"| added latency, median / p99 | {statistics.median(added):.2f} / {pct(added, 99):.2f} ms | ≤ 1 ms median |")
    print(f"| cache hit, median / p99 | {statistics.median(hits):.2f} / {pct(hits, 99):.2f} ms | ≤ 2 ms median |")
    print(f"| throughput at {args.concurrency} concurrent, direct / gateway | {rd:.0f} / {rg:.0f} req/s "
          f"({rg / rd:.0%}) | ≥ 70% |")
    print(f"| cold herd of {args.herd}: all answered in | {herd_s:.2f} s ({herd_ok}/{args.herd} ok, "
          f"{tiers['cold']['starts']} start) | 1 start |")
    print(f"| gateway RSS idle / peak under the herd | {idle_rss:.0f} / {herd_rss:.0f} MB | ≤ 300 MB idle |")


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
