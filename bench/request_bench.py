"""What judging a request costs before any machine is touched: messages, routing, preparing, parsing JSON.

Prints figures; it asserts nothing (wall-clock limits do not belong in tests: a loaded
machine fails them for no fault of the code). The goal each figure is read against is
printed beside it.

    .venv/bin/python bench/request_bench.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from router.config import PACKAGED_CONFIG, parse_config
from router.media import MediaLimits, parse_messages
from router.request import parse_json, prepare
from router.routing import classify


def per_call(fn: Callable[[], object], repeat: int, rounds: int = 5) -> float:
    """Median over `rounds` of the mean time per call, in seconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - start) / repeat)
    return statistics.median(times)


def png_url(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000, help="calls per round (default: %(default)s)")
    args = parser.parse_args()
    cfg = parse_config(PACKAGED_CONFIG.read_text(), str(PACKAGED_CONFIG))
    rows: list[tuple[str, float, str]] = []

    long_text = "Please describe everything you can see in this holiday photo from the beach. " * 20
    parsed = parse_messages([{"role": "user", "content": long_text}], MediaLimits())
    rows.append(("routing.classify, 1.6 KB question", per_call(lambda: classify(parsed), args.repeat), "< 500 us"))

    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Describe the weather in Paris today, please."}]}]
    rows.append(("media.parse_messages, text only", per_call(lambda: parse_messages(chat, MediaLimits()), args.repeat),
                 "< 200 us"))

    text_body = {"model": "auto", "messages": [{"role": "user", "content": "Write the HTML for a login page."}],
                 "max_tokens": 256, "temperature": 0.7, "stream": True, "stream_options": {"include_usage": True}}
    rows.append(("request.prepare, text question", per_call(lambda: prepare(text_body, cfg), args.repeat), "< 1 ms"))

    image = png_url((640, 480))
    image_body = {"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "What is this?"}]}]}
    rows.append(("request.prepare, 640x480 PNG", per_call(lambda: prepare(image_body, cfg), args.repeat // 10),
                 "< 5 ms"))

    raw_text = json.dumps(text_body).encode()
    rows.append(("request.parse_json, text body", per_call(lambda: parse_json(raw_text), args.repeat), "< 50 us"))
    raw_big = json.dumps({**image_body, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * (8 << 20)}}]}]}).encode()
    rows.append(("request.parse_json, 8 MiB image body", per_call(lambda: parse_json(raw_big), 5), "< 50 ms"))
    raw_wide = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                           "metadata": [[i] for i in range(100_000)]}).encode()
    rows.append(("request.parse_json, 100k nested lists (depth walk)", per_call(lambda: parse_json(raw_wide), 3),
                 "< 100 ms"))

    print(f"# request bench: Python {platform.python_version()}, {platform.machine()}")
    width = max(len(name) for name, _, _ in rows)
    for name, seconds, goal in rows:
        shown = f"{seconds * 1e6:9.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:9.2f} ms"
        print(f"{name.ljust(width)}  {shown}   (goal {goal})")


if __name__ == "__main__":
    main()
