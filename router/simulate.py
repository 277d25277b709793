"""`tiergate simulate`: replay a request trace on a virtual clock, before deploying a setting.

A week of traffic replays in well under a second: nothing sleeps, each tier is the gateway's
state machine driven by event times (stopped -> starting for the boot -> ready -> stopped).
Routing (`routing.pick_tier`), the idle rule (`policy.keep_alive`) and pre-warm windows
(`prewarm`) are the gateway's own code, so the figures describe what would run. The model,
its simplifications and the baselines are documented in docs/simulator.md.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import gzip
import io
import itertools
import json
import math
import random
import re
import statistics
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import policy, prewarm
from .config import Config, TierConfig, parse_duration

DEFAULT_OUTPUT_TOKENS = 256  # a request with no duration and no token counts
PREFILL_SPEEDUP = 20.0  # prompt tokens are read this many times faster than output tokens are written
GAP_MIN = 1.0  # shorter idle gaps are not recorded (as in state.note_arrival)
GAP_HISTORY = policy.MAX_GAPS  # the gateway keeps this many gaps
FIXED_BASELINE_IDLE = 300.0
SYNTHETIC_START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday, 00:00 UTC
METRICS = ("gpu_seconds", "cost", "starts", "requests", "waited_requests",
           "wait_mean_s", "wait_p50_s", "wait_p95_s", "wait_max_s")

# --- the trace -------------------------------------------------------------------------


class TraceError(Exception):
    """A trace that cannot be replayed: every problem as `FILE:LINE: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Row:
    """One request as a trace describes it, before routing."""

    t: float  # arrival, epoch seconds
    task: str = ""
    mode: str = ""
    tier: str = ""
    duration_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    line: int = 0


@dataclass(frozen=True)
class Request:
    """A routed request: where it goes and how long the tier works on it once ready."""

    t: float
    tier: str
    service: float


_AZURE = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
_COLUMNS = {"timestamp", "task", "tier", "mode", "duration_s", "prompt_tokens", "output_tokens"}
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")  # Azure writes 7 fractional digits; Python reads 6


def read_trace(path: str | Path) -> list[Row]:
    """Rows of a CSV trace (ours, or the Azure LLM inference trace as published), sorted by time."""
    name = str(path)
    try:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(name, "rt", encoding="utf-8", newline="") as f:
            return parse_trace(f.read(), name)
    except OSError as exc:
        raise TraceError([f"{name}:1: cannot read the trace: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise TraceError([f"{name}:1: not a UTF-8 text file (a CSV trace is expected)"]) from None


def parse_trace(text: str, name: str = "trace.csv") -> list[Row]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    azure = _AZURE <= set(header)
    if not azure and "timestamp" not in header:
        expected = "'timestamp,task,mode,duration_s', or the Azure trace's 'TIMESTAMP,ContextTokens,GeneratedTokens'"
        raise TraceError([f"{name}:1: no `timestamp` column (expected a header like {expected})"])
    unknown = [] if azure else sorted(set(header) - _COLUMNS)
    if unknown:
        raise TraceError([f"{name}:1: unknown column(s) {', '.join(unknown)}; known: {', '.join(sorted(_COLUMNS))}"])
    rows: list[Row] = []
    problems: list[str] = []
    for raw in reader:
        line = reader.line_num
        try:
            rows.append(_azure_row(raw, line) if azure else _row(raw, line))
        except ValueError as exc:
            problems.append(f"{name}:{line}: {exc}")
    if problems:
        raise TraceError(_capped(problems))
    if not rows:
        raise TraceError([f"{name}:1: the trace has no requests"])
    return sorted(rows, key=lambda r: r.t)


def _row(raw: dict[str, str | None], line: int) -> Row:
    def cell(key: str) -> str:
        return (raw.get(key) or "").strip()

    return Row(
        t=parse_time(cell("timestamp")),
        task=cell("task"),
        mode=cell("mode"),
        tier=cell("tier"),
        duration_s=_number(cell("duration_s"), "duration_s", float),
        prompt_tokens=_number(cell("prompt_tokens"), "prompt_tokens", int),
        output_tokens=_number(cell("output_tokens"), "output_tokens", int),
        line=line,
    )


def _azure_row(raw: dict[str, str | None], line: int) -> Row:
    return Row(
        t=parse_time((raw.get("TIMESTAMP") or "").strip()),
        prompt_tokens=_number((raw.get("ContextTokens") or "").strip(), "ContextTokens", int),
        output_tokens=_number((raw.get("GeneratedTokens") or "").strip(), "GeneratedTokens", int),
        line=line,
    )


def parse_time(text: str) -> float:
    """Epoch seconds from epoch seconds or ISO 8601; a time without a zone is UTC."""
    if not text:
        raise ValueError("empty timestamp")
    try:
        epoch = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(epoch):
            raise ValueError(f"timestamp {text!r} is not a time")
        return epoch
    try:
        when = datetime.fromisoformat(_LONG_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
    except ValueError:
        raise ValueError(f"timestamp {text!r} is neither epoch seconds nor ISO 8601 (e.g. 2025-01-06T09:30:00Z)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _number(text: str, column: str, kind: type[int | float]) -> float | int | None:
    """An optional non-negative cell; token counts must be whole ("12" or "12.0")."""
    if not text:
        return None
    try:
        value = kind(float(text)) if kind is int and re.fullmatch(r"\d+(\.0*)?", text) else kind(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a {'whole ' if kind is int else ''}number") from None
    if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{column} {text!r} must be a finite number >= 0")
    return value


def _capped(problems: list[str], limit: int = 20) -> list[str]:
    if len(problems) <= limit:
        return problems
    return [*problems[:limit], f"... and {len(problems) - limit} more problems"]


def route(rows: Iterable[Row], cfg: Config, name: str = "trace") -> list[Request]:
    """Each row's tier (as the gateway would pick it) and service time; every bad row reported."""
    from . import routing
    from .errors import BadRequest, TierUnavailable

    tasks = {t: r.model_dump() for t, r in cfg.routing.tasks.items()} or {
        "caption": dict.fromkeys(routing.MODES, next(iter(cfg.tiers)))
    }
    out: list[Request] = []
    problems: list[str] = []
    for row in rows:
        where = f"{name}:{row.line}: " if row.line else ""
        try:
            if row.tier:
                if row.tier not in cfg.tiers:
                    raise ValueError(f"tier {row.tier!r} is not in the config (tiers: {', '.join(cfg.tiers)})")
                tier = row.tier
            else:
                if row.task and row.task not in routing.TASKS:
                    raise ValueError(f"unknown task {row.task!r}; use one of {', '.join(routing.TASKS)}")
                tier = routing.pick_tier(tasks, row.task or "caption", row.mode or cfg.routing.default_mode)
        except (ValueError, BadRequest, TierUnavailable) as exc:
            problems.append(f"{where}{getattr(exc, 'message', None) or exc}")
            continue
        out.append(Request(row.t, tier, service_seconds(row, cfg.tiers[tier])))
    if problems:
        raise TraceError(_capped(problems))
    return out


def service_seconds(row: Row, tier: TierConfig) -> float:
    """The recorded duration, else a token estimate at the tier's speed (prefill much faster than decode)."""
    if row.duration_s is not None:
        return float(row.duration_s)
    if row.prompt_tokens is None and row.output_tokens is None:
        return DEFAULT_OUTPUT_TOKENS / tier.tokens_per_second
    prompt, output = row.prompt_tokens or 0, row.output_tokens or 0
    return (output + prompt / PREFILL_SPEEDUP) / tier.tokens_per_second


# --- synthetic traces --------------------------------------------------------------------

_TASK_MIX = {"caption": 35, "ocr": 20, "document": 10, "grounding": 10, "html": 10,
             "gui_agent": 7, "video": 6, "long_video": 2}
_MODE_MIX = {"speed": 20, "balanced": 65, "quality": 15}


class _Gen:
    """A seeded random source with the few distributions the traffic models need."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

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

    def row(self, t: float, task: str, mode: str) -> Row:
        video = task in ("video", "long_video")
        prompt = int(self.lognormal(9000 if video else 1200, 0.5, 50, 100_000))
        output = int(self.lognormal(400 if video else 250, 0.6, 16, 2048))
        return Row(t=t, task=task, mode=mode, prompt_tokens=prompt, output_tokens=output)

    def session(self, start: float, requests: int) -> Iterator[Row]:
        """One user's visit: mostly one task in one mode, an occasional other task."""
        task, mode = self.pick(_TASK_MIX), self.pick(_MODE_MIX)
        t = start
        for _ in range(requests):
            yield self.row(t, task if self.r.random() < 0.8 else self.pick(_TASK_MIX), mode)
            t += self.think()

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
            yield from g.session(g.at_hour(day, hour, hour + 1), g.geometric(7))


def _sparse(g: _Gen, day: float, weekday: int) -> Iterator[Row]:
    """Every day: Poisson(3) sessions at uniform times 7-23 UTC, each 1 + geometric(mean 2) requests."""
    for _ in range(g.poisson(3)):
        yield from g.session(g.at_hour(day, 7, 23), g.geometric(2))


def _bursty(g: _Gen, day: float, weekday: int) -> Iterator[Row]:
    """Demos: on half the weekdays, 1-2 bursts of 30-120 requests within 10-30 minutes (many at
    once) between 10 and 17 UTC; otherwise silence, apart from Poisson(1) stray requests a day."""
    if weekday < 5 and g.r.random() < 0.5:
        for _ in range(g.r.randint(1, 2)):
            start, length = g.at_hour(day, 10, 17), g.r.uniform(600, 1800)
            task, mode = g.pick(_TASK_MIX), g.pick(_MODE_MIX)
            for _ in range(g.r.randint(30, 120)):
                yield g.row(start + g.r.uniform(0, length), task, mode)
    for _ in range(g.poisson(1)):
        yield g.row(g.at_hour(day, 8, 20), g.pick(_TASK_MIX), g.pick(_MODE_MIX))


def _webui(g: _Gen, day: float, weekday: int) -> Iterator[Row]:
    """The write-up's WebUI: Poisson(4) sessions a weekday (1.2 on weekends) at 9-23 UTC, each a
    10-35 minute conversation with a request every think time: about 1.5 h of use a day."""
    for _ in range(g.poisson(4 if weekday < 5 else 1.2)):
        start = g.at_hour(day, 9, 23)
        end = start + g.r.uniform(600, 2100)
        task, mode = g.pick(_TASK_MIX), g.pick(_MODE_MIX)
        t = start
        while t < end:
            yield g.row(t, task if g.r.random() < 0.8 else g.pick(_TASK_MIX), mode)
            t += g.think()


SYNTHETIC: dict[str, Callable[[_Gen, float, int], Iterator[Row]]] = {
    "office-hours": _office_hours,
    "sparse": _sparse,
    "bursty": _bursty,
    "webui": _webui,
}


def synthetic(kind: str, days: int, seed: int) -> list[Row]:
    """A deterministic trace for (kind, days, seed), starting Monday 2025-01-06 00:00 UTC."""
    g = _Gen(seed)
    start = SYNTHETIC_START.timestamp()
    rows: list[Row] = []
    for d in range(days):
        rows.extend(SYNTHETIC[kind](g, start + d * 86400, (SYNTHETIC_START.weekday() + d) % 7))
    return sorted(rows, key=lambda r: r.t)


def write_trace(rows: Iterable[Row], path: str | Path) -> None:
    """Save rows as a CSV trace `--trace` reads back (ISO 8601 UTC times), e.g. a synthetic one to share."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["timestamp", "task", "mode", "tier", "duration_s", "prompt_tokens", "output_tokens"])
        for r in rows:
            when = datetime.fromtimestamp(r.t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            out.writerow([when, r.task, r.mode, r.tier, "" if r.duration_s is None else r.duration_s,
                          "" if r.prompt_tokens is None else r.prompt_tokens,
                          "" if r.output_tokens is None else r.output_tokens])


# --- one tier's state machine ------------------------------------------------------------

KeepFn = Callable[[float, Sequence[float]], float]  # (idle since, gaps newest first) -> keep-alive s
BootFn = Callable[[], float]


@dataclass
class TierRun:
    """What one tier did over the replay."""

    gpu_seconds: float = 0.0
    starts: int = 0
    waits: list[float] = field(default_factory=list)


class Machine:
    """One tier's instance as the gateway runs it, on event times instead of a 1 s supervisor tick.

    Billing runs from the start call until the stop. A request arriving while stopped starts
    it; while stopped or booting it waits for ready. With nothing in flight, it stops once the
    keep-alive has passed since the last request ended (or since ready, if none came) unless
    a pre-warm window holds it; a window also starts it when stopped.
    """

    def __init__(self, keep: KeepFn, boot: BootFn, windows: Sequence[prewarm.Interval], t0: float) -> None:
        self.keep, self.boot = keep, boot
        self.w_start = [s for s, _ in windows]
        self.w_end = [e for _, e in windows]
        self.now = t0
        self.up_since: float | None = None  # None: stopped
        self.ready_at = -math.inf
        self.busy_until = -math.inf  # when everything in flight has ended
        self.gaps: deque[float] = deque(maxlen=GAP_HISTORY)  # newest first
        self.run = TierRun()
        self._version = 0  # changes whenever the keep-alive must be asked again
        self._stop: tuple[int, float] | None = None

    def arrive(self, t: float, service: float) -> None:
        self.advance(t)
        if self.busy_until <= t and t - self.busy_until > GAP_MIN and self.busy_until > -math.inf:
            self.gaps.appendleft(t - self.busy_until)
        if self.up_since is None:
            self._start(t)
        begin = max(t, self.ready_at)
        self.run.waits.append(begin - t)
        self.busy_until = max(self.busy_until, begin + service)
        self._version += 1

    def advance(self, t: float) -> None:
        """Everything the supervisor would do before `t`: idle stops and pre-warm starts."""
        while True:
            if self.up_since is None:
                i = bisect.bisect_right(self.w_end, self.now)  # first window not over yet
                if i < len(self.w_start) and max(self.w_start[i], self.now) < t:
                    self._start(max(self.w_start[i], self.now))
                    continue
            else:
                stop = self._stop_time()
                if stop < t:
                    self._bill(stop)
                    continue
            break
        self.now = max(self.now, t)

    def finish(self, end: float) -> TierRun:
        """Play out to the end of the trace; a tier still up runs out its keep-alive (that is billed too)."""
        self.advance(end)
        if self.up_since is not None:
            self._bill(self._stop_time())
        return self.run

    def _start(self, at: float) -> None:
        self.up_since, self.ready_at = at, at + self.boot()
        self.run.starts += 1
        self.now = at
        self._version += 1

    def _bill(self, stop: float) -> None:
        assert self.up_since is not None
        self.run.gpu_seconds += stop - self.up_since
        self.up_since, self.now = None, stop

    def _stop_time(self) -> float:
        """When the idle stop happens if no request comes: keep-alive after idle, pushed past windows."""
        if self._stop is None or self._stop[0] != self._version:
            idle_from = max(self.busy_until, self.ready_at)
            stop = idle_from + self.keep(idle_from, self.gaps)
            i = bisect.bisect_right(self.w_start, stop) - 1
            if i >= 0 and stop < self.w_end[i]:
                stop = self.w_end[i]
            self._stop = (self._version, stop)
        return self._stop[1]


# --- a whole replay ----------------------------------------------------------------------


@dataclass
class Replay:
    """A routed trace and its time span, ready to be played under several policies."""

    requests: list[Request]
    start: float
    end: float
    boots: dict[str, list[float]] = field(default_factory=dict)  # recorded boots, newest first

    def by_tier(self, order: Iterable[str]) -> dict[str, list[Request]]:
        """Requests per tier, tiers in config order, only those the trace uses."""
        out: dict[str, list[Request]] = {name: [] for name in order}
        for r in self.requests:
            out[r.tier].append(r)
        return {name: reqs for name, reqs in out.items() if reqs}


def make_replay(requests: list[Request], start: float | None = None, end: float | None = None) -> Replay:
    first = min(r.t for r in requests)
    last = max(r.t + r.service for r in requests)
    return Replay(sorted(requests, key=lambda r: r.t), first if start is None else min(start, first),
                  last if end is None else max(end, last))


def _boot_fn(tier: TierConfig, history: Sequence[float]) -> BootFn:
    """Configured boot, or the recorded boots replayed oldest first, round and round."""
    if not history:
        return lambda: tier.boot_seconds
    boots = itertools.cycle(reversed(history))
    return lambda: next(boots)


def play_tier(tier: TierConfig, reqs: list[Request], replay: Replay, keep: KeepFn, *, use_prewarm: bool = True) -> TierRun:
    if tier.always_on:  # only static URLs: someone else's machine that never stops; its hours still count
        return TierRun(gpu_seconds=replay.end - replay.start, waits=[0.0] * len(reqs))
    history = [r.t for r in reqs]
    windows = prewarm.windows(tier, replay.start, replay.end, history) if use_prewarm else []
    m = Machine(keep, _boot_fn(tier, replay.boots.get(tier.name, [])), windows, replay.start)
    for r in reqs:
        m.arrive(r.t, r.service)
    return m.finish(replay.end)


def policy_keep(tier: TierConfig, boots: Sequence[float]) -> KeepFn:
    """The gateway's rule: `policy.keep_alive` with the boot ETA it would use."""
    eta = statistics.median(boots[:10]) if boots else None
    return lambda _idle_from, gaps: policy.keep_alive(tier, gaps, eta)


def oracle_keep(tier: TierConfig, reqs: list[Request]) -> KeepFn:
    """Knowing the next arrival: keep on exactly through the gap iff that beats stop + restart."""
    times = [r.t for r in reqs]
    wait_cost = policy.effective_wait_cost(tier)

    def keep(idle_from: float, _gaps: Sequence[float]) -> float:
        i = bisect.bisect_left(times, idle_from)
        if i == len(times):
            return 0.0
        gap = times[i] - idle_from
        keep_on = policy.offline_optimal_keep(gap, tier.price_per_hour, tier.boot_seconds, wait_cost)
        return gap if keep_on else 0.0

    return keep


def summary(runs: dict[str, TierRun], prices: dict[str, float], requests: dict[str, int]) -> dict[str, float | int]:
    """The contract's metric keys for a set of tiers (waits pooled over every request)."""
    waits = sorted(w for run in runs.values() for w in run.waits)
    waits += [0.0] * (sum(requests.values()) - len(waits))  # requests served by an always-on machine
    gpu = sum(run.gpu_seconds for run in runs.values())
    cost = sum(run.gpu_seconds * prices[name] / 3600 for name, run in runs.items())
    return {
        "gpu_seconds": round(gpu, 3),
        "cost": round(cost, 4),
        "starts": sum(run.starts for run in runs.values()),
        "requests": len(waits),
        "waited_requests": sum(1 for w in waits if w > 0),
        "wait_mean_s": round(statistics.fmean(waits), 3) if waits else 0.0,
        "wait_p50_s": round(percentile(waits, 50), 3),
        "wait_p95_s": round(percentile(waits, 95), 3),
        "wait_max_s": round(waits[-1], 3) if waits else 0.0,
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no data."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def single_machine_tier(cfg: Config) -> TierConfig:
    """The always-on single machine's price: `standard` (the 4090D of the seed), else a tier whose
    GPU names a 4090, else the priciest tier (one machine that can serve everything)."""
    if "standard" in cfg.tiers:
        return cfg.tiers["standard"]
    for tier in cfg.tiers.values():
        if "4090" in tier.gpu:
            return tier
    return max(cfg.tiers.values(), key=lambda t: t.price_per_hour)


BEST_FIXED_GRID = (0, 30, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600, 7200, 14400)


def best_fixed(tier: TierConfig, reqs: list[Request], replay: Replay) -> tuple[float, TierRun]:
    """The one idle_timeout (from a grid) that would have been best on this very trace, judged like
    `adaptive` judges (GPU cost + wait cost): what a perfectly tuned fixed policy could reach."""
    wait_cost = policy.effective_wait_cost(tier)
    best: tuple[float, float, TierRun] | None = None
    for k in BEST_FIXED_GRID:
        run = play_tier(tier, reqs, replay, lambda _idle_from, _gaps, k=k: float(k))
        score = run.gpu_seconds * tier.price_per_hour / 3600 + wait_cost * sum(run.waits) / 60
        if best is None or score < best[0]:
            best = (score, float(k), run)
    assert best is not None
    return best[1], best[2]


@dataclass
class Outcome:
    """The report (the `--json` document) and what only the table shows."""

    report: dict[str, dict]
    best_fixed_idle: dict[str, float]  # tier -> the best_fixed baseline's idle timeout


def simulate(replay: Replay, cfg: Config) -> Outcome:
    """The configured policies per tier and in total, and the baselines on the same trace."""
    groups = replay.by_tier(cfg.tiers)
    tiers = {name: cfg.tiers[name] for name in groups}
    prices = {name: t.price_per_hour for name, t in tiers.items()}
    counts = {name: len(reqs) for name, reqs in groups.items()}

    def play(keep_for: Callable[[TierConfig, list[Request]], KeepFn], use_prewarm: bool = True) -> dict[str, TierRun]:
        return {name: play_tier(tiers[name], reqs, replay, keep_for(tiers[name], reqs), use_prewarm=use_prewarm)
                for name, reqs in groups.items()}

    runs = play(lambda t, _r: policy_keep(t, replay.boots.get(t.name, [])))
    fixed = {name: t.model_copy(update={"policy": "fixed", "idle_timeout": FIXED_BASELINE_IDLE}) for name, t in tiers.items()}
    tuned = {name: best_fixed(tiers[name], reqs, replay) for name, reqs in groups.items()}
    span = replay.end - replay.start
    single = single_machine_tier(cfg)
    report = {
        "tiers": {name: summary({name: run}, prices, {name: counts[name]}) for name, run in runs.items()},
        "total": summary(runs, prices, counts),
        "baselines": {
            "always_on_single": summary({single.name: TierRun(gpu_seconds=span)}, {single.name: single.price_per_hour}, counts),
            "always_on_per_tier": summary({n: TierRun(gpu_seconds=span) for n in groups}, prices, counts),
            "fixed_5m": summary(play(lambda t, _r: policy_keep(fixed[t.name], [])), prices, counts),
            "best_fixed": summary({n: run for n, (_k, run) in tuned.items()}, prices, counts),
            "offline_optimum": summary(play(oracle_keep, use_prewarm=False), prices, counts),
        },
    }
    return Outcome(report, {n: k for n, (k, _run) in tuned.items()})


# --- output ------------------------------------------------------------------------------


def format_table(outcome: Outcome, title: str = "") -> str:
    """The report as a table a person reads; the comparison the adaptive policy is judged by last."""
    report = outcome.report
    head = ("", "GPU h", "cost", "starts", "requests", "waited", "wait mean", "p50", "p95", "max")
    rows = [head]

    def line(name: str, m: dict) -> tuple[str, ...]:
        return (name, f"{m['gpu_seconds'] / 3600:.2f}", f"{m['cost']:.2f}", str(m["starts"]), str(m["requests"]),
                str(m["waited_requests"]), f"{m['wait_mean_s']:.1f}s", f"{m['wait_p50_s']:.1f}s",
                f"{m['wait_p95_s']:.1f}s", f"{m['wait_max_s']:.1f}s")

    rows += [line(f"tier {n}", m) for n, m in report["tiers"].items()]
    rows.append(line("total", report["total"]))
    rows += [line(f"baseline {n}", m) for n, m in report["baselines"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)
    total, base = report["total"], report["baselines"]
    opt, fixed, single = base["offline_optimum"], base["fixed_5m"], base["always_on_single"]
    best = ", ".join(f"{n} {_duration(k)}" for n, k in outcome.best_fixed_idle.items())
    notes = [
        (f"cost vs offline optimum: {_pct(total['cost'], opt['cost'])}; "
         f"p95 wait {total['wait_p95_s']:.1f}s vs fixed_5m {fixed['wait_p95_s']:.1f}s"),
        (f"vs always_on_single: GPU time {_pct(total['gpu_seconds'], single['gpu_seconds'])}, "
         f"cost {_pct(total['cost'], single['cost'])}"),
        f"best_fixed: the best idle_timeout for this trace, per tier: {best}",
    ]
    return "\n".join(([title] if title else []) + [text, "", *notes])


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 60:g}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:.0f}s"


def _pct(value: float, ref: float) -> str:
    return f"{(value - ref) / ref * 100:+.1f}%" if ref else "n/a"


def write_outputs(report: dict[str, dict], out: Path, title: str = "") -> None:
    """`report.json` (the `--json` document) and `report.png` (cost and p95 wait per policy)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["configured", *report["baselines"]]
    metrics = [report["total"], *report["baselines"].values()]
    fig, (ax_cost, ax_wait) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = ["#d62728"] + ["#7f7f7f"] * (len(names) - 1)
    for ax, key, label, fmt in ((ax_cost, "cost", "GPU cost (log scale)", "{:.1f}"),
                                (ax_wait, "wait_p95_s", "p95 cold-start wait (s)", "{:.0f}s")):
        values = [m[key] for m in metrics]
        bars = ax.bar(names, values, color=colors)
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=8)
        ax.set_title(label)
        ax.tick_params(axis="x", labelrotation=30)
    if any(m["cost"] > 0 for m in metrics):
        ax_cost.set_yscale("log")  # always-on is 10-100x the rest; a linear axis hides the comparison
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=110)
    plt.close(fig)


# --- the command -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("traffic (one of)")
    src.add_argument("--trace", metavar="FILE", help="CSV trace: timestamp[,task,tier,mode,duration_s,prompt_tokens,"
                     "output_tokens], or the Azure LLM inference trace (TIMESTAMP,ContextTokens,GeneratedTokens); .gz ok")
    src.add_argument("--synthetic", choices=sorted(SYNTHETIC), help="a generated trace (see docs/simulator.md)")
    src.add_argument("--days", type=int, default=14, help="days of synthetic traffic (default 14)")
    src.add_argument("--seed", type=int, default=1, help="seed of the synthetic traffic (default 1)")
    parser.add_argument("--policy", choices=("fixed", "adaptive"), help="idle policy for every tier (default: the config's)")
    parser.add_argument("--idle", metavar="DURATION", help="idle_timeout for every tier, e.g. 5m (the fixed policy's)")
    parser.add_argument("--live-history", action="store_true",
                        help="replay boots from the gateway's recorded boot history in Redis instead of boot_seconds")
    parser.add_argument("--save-trace", metavar="FILE", help="also write the replayed trace as CSV (e.g. a synthetic one)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", metavar="DIR", help="also write DIR/report.json and DIR/report.png")


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        cfg = _overridden(cfg, getattr(args, "policy", None), getattr(args, "idle", None))
        replay, title = _load(args, cfg)
        if getattr(args, "live_history", False):
            replay = dataclasses.replace(replay, boots=live_boots(cfg))
    except TraceError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    outcome = simulate(replay, cfg)
    if args.json:
        print(json.dumps(outcome.report, indent=2))
    else:
        print(format_table(outcome, title))
    if getattr(args, "out", None):
        write_outputs(outcome.report, Path(args.out), title)
    return 0


def _overridden(cfg: Config, policy_name: str | None, idle: str | None) -> Config:
    update: dict[str, object] = {}
    if policy_name:
        update["policy"] = policy_name
    if idle:
        try:
            update["idle_timeout"] = parse_duration(idle)
        except ValueError as exc:
            raise TraceError([f"--idle: {exc}"]) from None
    if not update:
        return cfg
    return cfg.model_copy(update={"tiers": {n: t.model_copy(update=update) for n, t in cfg.tiers.items()}})


def _load(args: argparse.Namespace, cfg: Config) -> tuple[Replay, str]:
    trace, kind = getattr(args, "trace", None), getattr(args, "synthetic", None)
    if bool(trace) == bool(kind):
        raise TraceError(["tiergate simulate: give one of --trace FILE or --synthetic MODEL"])
    save = getattr(args, "save_trace", None)
    if trace:
        rows = read_trace(trace)
        if save:
            write_trace(rows, save)
        return make_replay(route(rows, cfg, trace)), f"trace {trace}"
    if args.days < 1:
        raise TraceError(["--days must be at least 1"])
    rows = synthetic(kind, args.days, args.seed)
    if not rows:
        raise TraceError([f"--synthetic {kind} --days {args.days} --seed {args.seed} generated no requests; try more days"])
    if save:
        write_trace(rows, save)
    start = SYNTHETIC_START.timestamp()
    replay = make_replay(route(rows, cfg, f"synthetic {kind}"), start, start + args.days * 86400)
    return replay, f"synthetic {kind}, {args.days} days, seed {args.seed}"


def live_boots(cfg: Config) -> dict[str, list[float]]:
    """Recorded cold starts per tier (newest first) from the gateway's Redis."""
    import asyncio

    from .redis_server import open_redis
    from .state import HISTORY, PREFIX

    async def read() -> dict[str, list[float]]:
        handle = open_redis(cfg)
        try:
            return {name: [float(b) for b in await handle.client.lrange(f"{PREFIX}boots:{name}", 0, HISTORY - 1)]
                    for name in cfg.tiers}
        finally:
            await handle.aclose()

    try:
        return asyncio.run(read())
    except Exception as exc:  # noqa: BLE001 - any Redis failure is the user's to fix, said plainly
        raise TraceError([f"--live-history: cannot read boot history from Redis: {exc}"]) from None
