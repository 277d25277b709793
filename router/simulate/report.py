"""Replaying a routed trace under the configured policy and the baselines, and reporting it."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import policy
from ..config import Config, TierConfig
from . import baselines
from .machine import BootFn, Decider, TierRun, play
from .trace import Request

METRICS = ("gpu_seconds", "cost", "starts", "requests", "waited_requests",
           "wait_mean_s", "wait_p50_s", "wait_p95_s", "wait_max_s")


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


def boot_fn(tier: TierConfig, history: Sequence[float]) -> BootFn:
    """Configured boot (or standby restart), or the recorded boots replayed oldest first, round and round."""
    quick = tier.standby_boot_seconds
    if not history:
        return lambda standby: quick if standby and quick else tier.boot_seconds
    boots = itertools.cycle(list(reversed(history)))
    return lambda standby: quick if standby and quick else next(boots)


def play_tier(tier: TierConfig, reqs: list[Request], replay: Replay, decider: Decider | None = None, *,
              intents: bool | None = None, use_prewarm: bool = True) -> TierRun:
    from ..decide import decide

    return play(tier, reqs, replay.start, replay.end, boot_fn(tier, replay.boots.get(tier.name, [])),
                decider or decide, intents=intents, use_prewarm=use_prewarm)


def summary(runs: dict[str, TierRun], tiers: dict[str, TierConfig], requests: dict[str, int]) -> dict[str, float | int]:
    """The contract's metric keys for a set of tiers (waits pooled over every request)."""
    waits = sorted(w for run in runs.values() for w in run.waits)
    waits += [0.0] * (sum(requests.values()) - len(waits))  # requests served by an always-on machine
    gpu = sum(run.gpu_seconds for run in runs.values())
    cost = sum(run.cost(tiers[name]) for name, run in runs.items())
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


def best_fixed(tier: TierConfig, reqs: list[Request], replay: Replay) -> tuple[float, TierRun]:
    """The one idle_timeout (from a grid) that would have been best on this very trace, judged like
    `adaptive` judges (GPU cost + wait cost): what a perfectly tuned fixed policy could reach."""
    wait_cost = policy.effective_wait_cost(tier)
    best: tuple[float, float, TierRun] | None = None
    for k in baselines.BEST_FIXED_GRID:
        t, decider = baselines.fixed(tier, k)
        run = play_tier(t, reqs, replay, decider, intents=False)
        score = run.cost(tier) + wait_cost * sum(run.waits) / 60
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
    counts = {name: len(reqs) for name, reqs in groups.items()}

    def play_all(make: object, *, intents: bool | None = None, use_prewarm: bool = True) -> dict[str, TierRun]:
        out = {}
        for name, reqs in groups.items():
            t, decider = make(tiers[name], reqs)  # type: ignore[operator]
            out[name] = play_tier(t, reqs, replay, decider, intents=intents, use_prewarm=use_prewarm)
        return out

    runs = play_all(lambda t, _r: (t, None))
    tuned = {name: best_fixed(tiers[name], reqs, replay) for name, reqs in groups.items()}
    span = replay.end - replay.start
    single = single_machine_tier(cfg)
    always = {n: TierRun(gpu_seconds=span) for n in groups}
    report = {
        "tiers": {name: summary({name: run}, tiers, {name: counts[name]}) for name, run in runs.items()},
        "total": summary(runs, tiers, counts),
        "baselines": {
            "always_on_single": summary({single.name: TierRun(gpu_seconds=span)}, {single.name: single}, counts),
            "always_on_per_tier": summary(always, tiers, counts),
            "fixed_5m": summary(play_all(lambda t, _r: baselines.fixed(t, baselines.FIXED_BASELINE_IDLE), intents=False),
                                tiers, counts),
            "best_fixed": summary({n: run for n, (_k, run) in tuned.items()}, tiers, counts),
            "previous_adaptive": summary(play_all(lambda t, _r: baselines.previous_adaptive(t), intents=False), tiers, counts),
            "adaptive": summary(play_all(lambda t, _r: (t.model_copy(update={"policy": "adaptive"}), None), intents=True),
                                tiers, counts),
            "offline_optimum": summary(play_all(lambda t, r: baselines.oracle(t, [q.t for q in r]), intents=False,
                                                use_prewarm=False), tiers, counts),
        },
    }
    return Outcome(report, {n: k for n, (k, _run) in tuned.items()})


def format_table(outcome: Outcome, title: str = "") -> str:
    """The report as a table a person reads; the comparison the policy is judged by last."""
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
        (f"cost vs offline optimum: {_ratio(total['cost'], opt['cost'])}; mean wait vs fixed_5m "
         f"{_ratio(total['wait_mean_s'], fixed['wait_mean_s'])}; p95 wait {total['wait_p95_s']:.1f}s vs fixed_5m "
         f"{fixed['wait_p95_s']:.1f}s"),
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


def _ratio(value: float, ref: float) -> str:
    return f"{value / ref:.2f}x" if ref else "n/a"


def write_outputs(report: dict[str, dict], out: Path, title: str = "") -> None:
    """`report.json` (the `--json` document) and `report.png` (cost and p95 wait per policy)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["configured", *report["baselines"]]
    metrics = [report["total"], *report["baselines"].values()]
    fig, (ax_cost, ax_wait) = plt.subplots(1, 2, figsize=(13, 4.5))
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
