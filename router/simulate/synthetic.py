"""Synthetic traffic: seeded models of how small teams use a multimodal chat (docs/simulator.md).

Every request belongs to a session (one person's visit, `office-hours-17`). A session's
page closes after its last answer for `CLOSE_SHARE` of visitors (they read, then close the
tab); the others leave it open for hours. A request with an attachment (every task but
`html`) is seen coming `intent_s` seconds early, while its user types the question.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

from .trace import Row

SYNTHETIC_START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday, 00:00 UTC
CLOSE_SHARE = 0.5  # visitors who close the page after their last answer; the rest leave it open

_TASK_MIX = {"caption": 35, "ocr": 20, "document": 10, "grounding": 10, "html": 10,
             "gui_agent": 7, "video": 6, "long_video": 2}
_MODE_MIX = {"speed": 20, "balanced": 65, "quality": 15}


class _Gen:
    """A seeded random source with the few distributions the traffic models need."""

    def __init__(self, seed: int, close_share: float = CLOSE_SHARE) -> None:
        self.r = random.Random(seed)
        self.close_share = close_share
        self.sessions = 0

    def poisson(self, mean: float) -> int:
        """Knuth's method; the means here are small."""
        limit, k, p = math.exp(-mean), 0, 1.0
        while True:
            p *= self.r.random()
            if p <= limit:
                return k
            k += 1

    def geometric(self, mean: float) -> int:
        """Number of requests in a session: 1 + geometric, so the mean is `mean`."""
        q = 1 - 1 / mean
        n = 1
        while self.r.random() < q:
            n += 1
        return n

    def lognormal(self, median: float, sigma: float, lo: float, hi: float) -> float:
        return min(hi, max(lo, self.r.lognormvariate(math.log(median), sigma)))

    def pick(self, weights: dict[str, int]) -> str:
        return self.r.choices(list(weights), weights=list(weights.values()))[0]

    def think(self) -> float:
        """Seconds between one request of a session and the next (reading, typing, next image)."""
        return self.lognormal(50, 0.8, 5, 900)

    def row(self, t: float, task: str, mode: str, session: str = "", gap: float = math.inf) -> Row:
        video = task in ("video", "long_video")
        prompt = int(self.lognormal(9000 if video else 1200, 0.5, 50, 100_000))
        output = int(self.lognormal(400 if video else 250, 0.6, 16, 2048))
        intent = None
        if task != "html":  # a file is attached, then the question typed: lead median 15 s, never before the last answer
            intent = round(min(self.lognormal(15, 0.7, 2, 120), max(0.0, gap - 5)), 1)
        return Row(t=t, task=task, mode=mode, prompt_tokens=prompt, output_tokens=output, session=session, intent_s=intent)

    def new_session(self, kind: str) -> str:
        self.sessions += 1
        return f"{kind}-{self.sessions}"

    def closing(self, rows: list[Row]) -> list[Row]:
        """The page closes a read after the last request, or (left open) hours later."""
        if not rows:
            return rows
        last = rows[-1].t
        if self.r.random() < self.close_share:
            closed = last + self.lognormal(60, 0.6, 10, 900)
        else:
            closed = last + self.lognormal(2 * 3600, 0.7, 600, 10 * 3600)
        return [replace(r, closed=closed) for r in rows]

    def session(self, start: float, requests: int, kind: str) -> list[Row]:
        """One user's visit: mostly one task in one mode, an occasional other task."""
        task, mode = self.pick(_TASK_MIX), self.pick(_MODE_MIX)
        sid = self.new_session(kind)
        t, gap, out = start, math.inf, []
        for _ in range(requests):
            out.append(self.row(t, task if self.r.random() < 0.8 else self.pick(_TASK_MIX), mode, sid, gap))
            gap = self.think()
            t += gap
        return self.closing(out)

    def at_hour(self, day: float, hour_lo: float, hour_hi: float) -> float:
        return day + self.r.uniform(hour_lo, hour_hi) * 3600


def _office_hours(g: _Gen, day: float, weekday: int) -> Iterator[Row]:
    """Weekdays 9-18 UTC: sessions arrive as a Poisson process, 2/h, 0.6/h over lunch (12-13),
    0.15/h in the evening (18-21); each session 1 + geometric(mean 7) requests."""
    if weekday >= 5:
        return
    for hour in range(9, 21):
        rate = 0.6 if hour == 12 else 2.0 if hour < 18 else 0.15
        for _ in range(g.poisson(rate)):
            yield from g.session(g.at_hour(day, hour, hour + 1), g.geometric(7), "office-hours")


def _sparse(g: _Gen, day: float, weekday: int) -> Iterator[Row]:
    """Every day: Poisson(3) sessions at uniform times 7-23 UTC, each 1 + geometric(mean 2) requests."""
    for _ in range(g.poisson(3)):
        yield from g.session(g.at_hour(day, 7, 23), g.geometric(2), "sparse")


def _bursty(g: _Gen, day: float, weekday: int) -> Iterator[Row]:
    """Demos: on half the weekdays, 1-2 bursts of 30-120 requests within 10-30 minutes (many at
    once) between 10 and 17 UTC, each burst one presenter's page; otherwise silence, apart from
    Poisson(1) stray requests a day, each its own visit."""
    if weekday < 5 and g.r.random() < 0.5:
        for _ in range(g.r.randint(1, 2)):
            start, length = g.at_hour(day, 10, 17), g.r.uniform(600, 1800)
            task, mode = g.pick(_TASK_MIX), g.pick(_MODE_MIX)
            sid = g.new_session("bursty")
            times = sorted(start + g.r.uniform(0, length) for _ in range(g.r.randint(30, 120)))
            gaps = [math.inf] + [b - a for a, b in itertools.pairwise(times)]
            yield from g.closing([g.row(t, task, mode, sid, gap) for t, gap in zip(times, gaps, strict=True)])
    for _ in range(g.poisson(1)):
        yield from g.closing([g.row(g.at_hour(day, 8, 20), g.pick(_TASK_MIX), g.pick(_MODE_MIX), g.new_session("bursty"))])


def _webui(g: _Gen, day: float, weekday: int) -> Iterator[Row]:
    """The write-up's WebUI: Poisson(4) sessions a weekday (1.2 on weekends) at 9-23 UTC, each a
    10-35 minute conversation with a request every think time: about 1.5 h of use a day."""
    for _ in range(g.poisson(4 if weekday < 5 else 1.2)):
        start = g.at_hour(day, 9, 23)
        end = start + g.r.uniform(600, 2100)
        task, mode = g.pick(_TASK_MIX), g.pick(_MODE_MIX)
        sid = g.new_session("webui")
        t, gap, rows = start, math.inf, []
        while t < end:
            rows.append(g.row(t, task if g.r.random() < 0.8 else g.pick(_TASK_MIX), mode, sid, gap))
            gap = g.think()
            t += gap
        yield from g.closing(rows)


SYNTHETIC: dict[str, Callable[[_Gen, float, int], Iterator[Row]]] = {
    "office-hours": _office_hours,
    "sparse": _sparse,
    "bursty": _bursty,
    "webui": _webui,
}


def synthetic(kind: str, days: int, seed: int, close_share: float = CLOSE_SHARE) -> list[Row]:
    """A deterministic trace for (kind, days, seed), starting Monday 2025-01-06 00:00 UTC."""
    g = _Gen(seed, close_share)
    start = SYNTHETIC_START.timestamp()
    rows: list[Row] = []
    for d in range(days):
        rows.extend(SYNTHETIC[kind](g, start + d * 86400, (SYNTHETIC_START.weekday() + d) % 7))
    return sorted(rows, key=lambda r: r.t)
