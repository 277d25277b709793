"""The gateway's warm path at its default settings, side by side with the worker it fronts.

Prints one table (markdown) and asserts nothing. What users run is measured: `tiergate
serve` with the default config (cache on, log level info) in front of `bench/fast_worker.py`,
an OpenAI-style worker fast enough that the gateway is the bottleneck. Direct and gateway
requests are interleaved in one run, so a noisy machine affects both alike; figures are
medians. Misses are misses: every request asks something new. Throughput comes from `wrk`
(Debian package `wrk`) when installed, else from an asyncio client (said in the table).

    .venv/bin/python bench/gateway_bench.py [--requests 2000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import free_port, wait_for

COUNTER = itertools.count()
WARM_UP = 5.0  # seconds of interleaved requests before a series is measured
CONTENT = re.compile(rb'"content":\s*"w')  # a streamed token of bench/fast_worker.py


def body(stream: bool = False, cache: bool | None = None, text: str | None = None) -> dict:
    b: dict = {"model": "auto", "messages": [{"role": "user", "content": text or f"Describe red square {next(COUNTER)}."}],
               "max_tokens": 16, "stream": stream}
    if cache is not None:
        b["tiergate"] = {"cache": cache}
    return b


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def config(tmp: Path, fast: str, slow: str) -> Path:
    """The packaged default's settings (cache on), with static tiers in front of the bench workers."""
    routes = "\n".join(f'[routing.tasks.{t}]\nspeed = "warm"\nbalanced = "warm"\nquality = "warm"'
                       for t in ("caption", "ocr", "document", "grounding", "html", "gui_agent", "video", "long_video"))
    tiers = "".join(f'\n[tiers.{name}]\ngpu = "RTX 4090D"\nprice_per_hour = 2.8\nmodel = "bench"\n\n'
                    f'[[tiers.{name}.instances]]\nprovider = "static"\nurl = "{url}"\n'
                    for name, url in (("warm", fast), ("paced", slow)))
    text = f'[gateway]\ndata_dir = "{tmp / "data"}"\n\n{routes}\n{tiers}'
    path = tmp / "tiers.toml"
    path.write_text(text)
    return path


def start_worker(port: int, serial_ms: float = 0.0, chunks: int = 200) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fast_worker.py"), "--port", str(port),
                             "--serial-ms", str(serial_ms), "--chunks", str(chunks)])
    wait_for(lambda: _up(f"http://127.0.0.1:{port}/health"), what="bench worker")
    return proc


def start_gateway(cfg: Path, workers: int = 1) -> tuple[subprocess.Popen, str]:
    """`tiergate serve` as a user starts it (log level info), on a config in its own folder."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    log = open(cfg.parent / f"gateway-{port}.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config", str(cfg), "--port", str(port),
                             "--workers", str(workers)], stdout=log, stderr=log, env=env, cwd=cfg.parent)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(url + "/healthz") and _ready(url), timeout=120, what="gateway")
    return proc, url


def _ready(url: str) -> bool:
    tiers = httpx.get(url + "/api/tiers", trust_env=False).json()["tiers"]
    return all(t["state"] == "ready" for t in tiers)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


class Conn:
    """One keep-alive HTTP/1.1 connection with as little client work as possible.

    A Python HTTP client spends a millisecond or more per request (httpx: ~2 ms here), which
    would hide the gateway's own cost; this one sends prepared bytes and reads the answer by
    its Content-Length or chunked framing, so the figures are the server's.
    """

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split("/")[0].split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, path: str, b: dict) -> tuple[float, float, int]:
        """(ms to the first content byte of the answer, ms in all, content events seen)."""
        data = orjson.dumps(b)
        t0 = time.perf_counter()
        self.sock.sendall(b"POST %s HTTP/1.1\r\nHost: bench\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
        head = self._until(b"\r\n\r\n")
        status = int(head[9:12])
        if status != 200:
            raise RuntimeError(head.decode(errors="replace"))
        lowered = head.lower()
        if b"transfer-encoding: chunked" in lowered:
            first, events = 0.0, 0
            while True:
                size = int(self._until(b"\r\n"), 16)
                chunk = self._exactly(size + 2)[:-2]
                if size == 0:
                    break
                n = len(CONTENT.findall(chunk))
                if n and not first:
                    first = time.perf_counter()
                events += n
            return (first - t0) * 1000, (time.perf_counter() - t0) * 1000, events
        length = int(lowered.split(b"content-length: ")[1].split(b"\r\n")[0])
        self._exactly(length)
        took = (time.perf_counter() - t0) * 1000
        return took, took, 1

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self.buf += self.sock.recv(65536)
        out, self.buf = self.buf.split(sep, 1)
        return out

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.sock.recv(65536)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def ab(direct: str, gateway: str, n: int, cache: bool | None, stream: bool = False) -> tuple[list, list]:
    """Alternate a direct and a gateway request n times (each gateway request a miss, or a bypass)."""
    cd, cg = Conn(direct), Conn(gateway)
    path = "/v1/chat/completions"
    warm_until = time.perf_counter() + WARM_UP  # the first seconds after a start are slower for both (measured:
    while time.perf_counter() < warm_until:  # direct 0.37 ms, then 0.17): warm the machine and both paths first
        cd.post(path, body(stream))
        cg.post(path, body(stream, cache=cache))
    d, g = [], []
    for _ in range(n):
        d.append(cd.post(path, body(stream)))
        g.append(cg.post(path, body(stream, cache=cache)))
    return d, g


def hits(gateway: str, n: int) -> list[float]:
    c = Conn(gateway)
    b = body(text="the same question every time")
    c.post("/v1/chat/completions", b)
    time.sleep(1.5)  # on disk, and the bookkeeping flushed
    return [c.post("/v1/chat/completions", b)[1] for _ in range(n)]


WRK_SCRIPT = """
-- every request asks something new (a cache miss), in every wrk thread
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
counter = 0
request = function()
  counter = counter + 1
  local b = '{"model":"MODEL","max_tokens":16,"messages":[{"role":"user","content":"Describe square RUN-' ..
            tid .. '-' .. counter .. '."}]}'
  return wrk.format("POST", nil, {["content-type"] = "application/json"}, b)
end
"""


def throughput(url: str, model: str, concurrency: int, seconds: float, tmp: Path) -> tuple[float, str]:
    """Requests per second of unique (cache-missing) requests at `concurrency` connections."""
    if shutil.which("wrk"):
        script = tmp / f"post-{model}.lua"
        script.write_text(WRK_SCRIPT.replace("MODEL", model).replace("RUN", f"{next(COUNTER)}"))  # new every run
        out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "-s", str(script), url],
                             capture_output=True, text=True, check=True).stdout
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors:
            raise RuntimeError(f"wrk saw {errors.group(1)} errors:\n{out}")
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "wrk"
    return asyncio.run(_client_throughput(url, model, concurrency, seconds)), "an asyncio client"


async def timed(client: httpx.AsyncClient, url: str, b: dict) -> float:
    t0 = time.perf_counter()
    (await client.post(url, json=b)).raise_for_status()
    return (time.perf_counter() - t0) * 1000


async def _client_throughput(url: str, model: str, concurrency: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=60, trust_env=False, limits=httpx.Limits(max_connections=concurrency)) as c:
        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await timed(c, url, {**body(), "model": model})
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="requests per latency series")
    ap.add_argument("--streams", type=int, default=300, help="streamed answers per series")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one throughput run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    ap.add_argument("--quick", action="store_true", help="small series: checks that it runs, not figures")
    args = ap.parse_args()
    if args.quick:
        global WARM_UP
        args.requests, args.streams, args.seconds, args.rounds, WARM_UP = 40, 5, 1.0, 1, 0.2

    tmp = Path(tempfile.mkdtemp(prefix="tiergate-bench-"))
    fast_port, paced_port = free_port(), free_port()
    procs = [start_worker(fast_port), start_worker(paced_port, serial_ms=1.5)]
    fast, paced = f"http://127.0.0.1:{fast_port}", f"http://127.0.0.1:{paced_port}"
    chat = "/v1/chat/completions"
    try:
        (tmp / "one").mkdir()
        (tmp / "pool").mkdir()
        gw, url = start_gateway(config(tmp / "one", fast, paced))
        procs.append(gw)
        f: dict = {"pid": gw.pid, "rss_idle": rss_mb(gw.pid)}
        f["direct"], f["gateway"] = ab(fast, url, args.requests, cache=None)
        f["bypass_direct"], f["bypass"] = ab(fast, url, args.requests // 2, cache=False)
        f["hits"] = hits(url, args.requests)
        f["stream_direct"], f["stream"] = ab(fast, url, args.streams, cache=None, stream=True)
        f["worker_alone"], f["tool"] = throughput(fast + chat, "warm", 32, args.seconds, tmp)
        pool, pool_url = start_gateway(config(tmp / "pool", fast, paced), workers=2)
        procs.append(pool)
        f["rounds"] = []
        for _ in range(args.rounds):  # interleaved: the busy worker direct and through the gateway,
            rd, _ = throughput(paced + chat, "paced", 32, args.seconds, tmp)  # then the fast worker through
            rg, _ = throughput(url + chat, "paced", 32, args.seconds, tmp)  # one gateway process and two
            r1, _ = throughput(url + chat, "warm", 32, args.seconds, tmp)
            r2, _ = throughput(pool_url + chat, "warm", 32, args.seconds, tmp)
            f["rounds"].append((rd, rg, r1, r2))
        f["rss_after"] = rss_mb(gw.pid)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                p.wait(30)
    print(report(args, f))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def row(name: str, result: str, target: str, met: bool | None) -> str:
    verdict = "" if met is None else ("met" if met else "**missed**")
    return f"| {name} | {result} | {target} | {verdict} |"


def report(args: argparse.Namespace, f: dict) -> str:
    med = statistics.median
    added = [g[1] - d[1] for d, g in zip(f["direct"], f["gateway"], strict=True)]
    bypass_added = [g[1] - d[1] for d, g in zip(f["bypass_direct"], f["bypass"], strict=True)]
    ttft = [g[0] - d[0] for d, g in zip(f["stream_direct"], f["stream"], strict=True)]
    chunks = max(1, med(g[2] for g in f["stream"]) - 1)
    per_chunk = [((g[1] - g[0]) - (d[1] - d[0])) / chunks for d, g in zip(f["stream_direct"], f["stream"], strict=True)]
    rd = med(r[0] for r in f["rounds"])
    rg = med(r[1] for r in f["rounds"])
    r1 = med(r[2] for r in f["rounds"])
    r2 = med(r[3] for r in f["rounds"])
    lines = [
        (f"# tiergate gateway benchmark, {datetime.now(UTC):%Y-%m-%d}: {platform.machine()}, {os.cpu_count()} cores, "
         f"Python {platform.python_version()}"),
        "",
        (f"`tiergate serve` with the default settings (cache on, log level info) in front of bench/fast_worker.py "
         f"(alone: {f['worker_alone']:.0f} req/s at 32 connections); direct and gateway requests interleaved; "
         f"{len(f['direct'])} requests per latency series, {len(f['stream'])} streams of {chunks + 1:.0f} events, "
         f"throughput by {f['tool']} over {len(f['rounds'])} interleaved rounds; medians."),
        "",
        "| figure | result | target | |",
        "|---|---|---|---|",
        row("added latency, median, non-stream miss", f"{med(added):.2f} ms (direct {med(d[1] for d in f['direct']):.2f}, "
            f"gateway {med(g[1] for g in f['gateway']):.2f})", "<= 1.0 ms", med(added) <= 1.0),
        row("added latency, p99", f"{pct(added, 99):.2f} ms", "<= 3 ms", pct(added, 99) <= 3.0),
        row("added latency, median, cache bypassed", f"{med(bypass_added):.2f} ms", "", None),
        row("cache hit, median end to end", f"{med(f['hits']):.2f} ms", "<= 1.0 ms", med(f["hits"]) <= 1.0),
        row("streaming: added time to first token, median", f"{med(ttft):.2f} ms", "<= 1.0 ms", med(ttft) <= 1.0),
        row("streaming: added time per chunk after the first", f"{med(per_chunk) * 1000:.1f} µs", "<= 50 µs",
            med(per_chunk) <= 0.05),
        row("throughput, 32 concurrent misses, gateway / direct (a worker busy 1.5 ms per request)",
            f"{rg:.0f} / {rd:.0f} req/s = {rg / rd:.2f}", ">= 0.8", rg / rd >= 0.8),
        row("the gateway as the bottleneck (fast worker): `--workers 2` / one process",
            f"{r2:.0f} / {r1:.0f} req/s = {r2 / r1:.2f}x", ">= 1.5x", r2 / r1 >= 1.5),
        row("gateway RSS, idle / after the run", f"{f['rss_idle']:.0f} / {f['rss_after']:.0f} MB", "", None),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
