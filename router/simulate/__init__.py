"""`tiergate simulate`: replay a request trace on a virtual clock, before deploying a setting.

A week of traffic replays in well under a second: nothing sleeps, each tier is one instance
on event times whose every decision is `router.decide.decide`, the gateway's own function
(the simulator holds the facts and history the gateway holds in Redis). Modules: `trace`
(CSV I/O, routing, `export-trace`), `synthetic` (traffic models), `machine` (the virtual
clock), `baselines` (what the policy is compared with), `report` (the replay and its table),
`savings` (this week's saving, for the admin dashboard). docs/simulator.md has the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..config import Config, parse_duration
from .baselines import BEST_FIXED_GRID, FIXED_BASELINE_IDLE
from .machine import TierRun, TierSim, play
from .report import (
    METRICS,
    Outcome,
    Replay,
    best_fixed,
    format_table,
    make_replay,
    percentile,
    play_tier,
    simulate,
    single_machine_tier,
    summary,
    write_outputs,
)
from .savings import rows_from_stream, weekly_saving
from .synthetic import CLOSE_SHARE, SYNTHETIC, SYNTHETIC_START, synthetic
from .trace import (
    Request,
    Row,
    TraceError,
    add_export_arguments,
    export_trace,
    parse_time,
    parse_trace,
    read_trace,
    route,
    service_seconds,
    write_trace,
)

__all__ = [
    "BEST_FIXED_GRID",
    "CLOSE_SHARE",
    "FIXED_BASELINE_IDLE",
    "METRICS",
    "SYNTHETIC",
    "SYNTHETIC_START",
    "Outcome",
    "Replay",
    "Request",
    "Row",
    "TierRun",
    "TierSim",
    "TraceError",
    "add_arguments",
    "add_export_arguments",
    "best_fixed",
    "export_trace",
    "format_table",
    "live_boots",
    "make_replay",
    "parse_time",
    "parse_trace",
    "percentile",
    "play",
    "play_tier",
    "read_trace",
    "route",
    "rows_from_stream",
    "run",
    "run_export",
    "service_seconds",
    "simulate",
    "single_machine_tier",
    "summary",
    "synthetic",
    "weekly_saving",
    "write_outputs",
    "write_trace",
]

def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("traffic (one of)")
    src.add_argument("--trace", metavar="FILE", help="CSV trace: timestamp[,task,tier,mode,duration_s,prompt_tokens,"
                     "output_tokens,session,closed,intent_s], or the Azure LLM inference trace "
                     "(TIMESTAMP,ContextTokens,GeneratedTokens); .gz ok")
    src.add_argument("--synthetic", choices=sorted(SYNTHETIC), help="a generated trace (see docs/simulator.md)")
    src.add_argument("--days", type=int, default=14, help="days of synthetic traffic (default 14)")
    src.add_argument("--seed", type=int, default=1, help="seed of the synthetic traffic (default 1)")
    src.add_argument("--close-share", type=float, default=CLOSE_SHARE,
                     help=f"synthetic: share of visitors who close the page after their last answer (default {CLOSE_SHARE})")
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
    close_share = getattr(args, "close_share", CLOSE_SHARE)
    if not 0 <= close_share <= 1:
        raise TraceError([f"--close-share must be between 0 and 1 (a share of visitors), not {close_share:g}"])
    rows = synthetic(kind, args.days, args.seed, close_share)
    if not rows:
        raise TraceError([f"--synthetic {kind} --days {args.days} --seed {args.seed} generated no requests; try more days"])
    if save:
        write_trace(rows, save)
    start = SYNTHETIC_START.timestamp()
    replay = make_replay(route(rows, cfg, f"synthetic {kind}"), start, start + args.days * 86400)
    return replay, f"synthetic {kind}, {args.days} days, seed {args.seed}"


def live_boots(cfg: Config) -> dict[str, list[float]]:
    """Recorded cold starts per tier (newest first) from the gateway's Redis, read without starting one."""
    import asyncio

    from ..ledger import HISTORY
    from ..redis_server import open_for_reading
    from ..state import PREFIX

    async def read() -> dict[str, list[float]]:
        async with open_for_reading(cfg) as state:
            return {name: [float(b) for b in await state.client.lrange(f"{PREFIX}boots:{name}", 0, HISTORY - 1)]
                    for name in cfg.tiers}

    try:
        return asyncio.run(read())
    except Exception as exc:  # noqa: BLE001 - any Redis failure is the user's to fix, said plainly
        raise TraceError([f"--live-history: cannot read boot history from Redis: {exc}"]) from None


def run_export(args: argparse.Namespace, cfg: Config) -> int:
    """`tiergate export-trace --out FILE [--since WHEN]`: the gateway's own week as a trace."""
    import asyncio

    from ..redis_server import NoState, StateUnreachable, open_for_reading

    try:
        since = _since(args.since) if getattr(args, "since", None) else None
    except ValueError as exc:
        print(f"--since: {exc}", file=sys.stderr)
        return 2

    async def export() -> int:
        async with open_for_reading(cfg) as state:
            return await export_trace(state.client, Path(args.out), since)

    try:
        n = asyncio.run(export())
    except (NoState, StateUnreachable) as exc:
        print(f"tiergate export-trace: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.out}:1: cannot write the trace: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} requests to {args.out}", file=sys.stderr)
    return 0


def _since(text: str) -> float:
    """Epoch seconds or ISO 8601, or a duration back from now ("7d")."""
    try:
        return parse_time(text)
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a time (epoch seconds, ISO 8601) nor a duration like 7d") from None
