"""Trace I/O: the CSV the simulator reads and writes, routing rows to tiers, and `export-trace` from Redis.

A row is one request. Besides the arrival time and what it asks, a row may name its
`session` (a UI session or an API caller) with the time that session's page `closed`, and
`intent_s`: how many seconds before the request the UI saw it coming (a file attached), so
the simulator can replay the open-pages and warm-on-intent signals.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from ..config import Config, TierConfig

DEFAULT_OUTPUT_TOKENS = 256  # a request with no duration and no token counts
PREFILL_SPEEDUP = 20.0  # prompt tokens are read this many times faster than output tokens are written
TRACE_STREAM = "tg:trace"  # the gateway's request log (a Redis stream, capped at 100k entries)
INTENT_WINDOW = 600.0  # an intent is matched to the same session's next request on the tier within this long


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
    session: str = ""  # opaque id of the UI session or API caller; "" = unknown
    closed: float | None = None  # epoch s the session's page closed; None = open or unknown
    intent_s: float | None = None  # the UI saw this request coming this many seconds before it


@dataclass(frozen=True)
class Request:
    """A routed request: where it goes and how long the tier works on it once ready."""

    t: float
    tier: str
    service: float
    session: str = ""
    closed: float | None = None
    intent_s: float | None = None


_AZURE = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
COLUMNS = ("timestamp", "task", "mode", "tier", "duration_s", "prompt_tokens", "output_tokens", "session", "closed", "intent_s")
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")  # Azure writes 7 fractional digits; Python reads 6


def read_trace(path: str | Path) -> list[Row]:
    """Rows of a CSV trace (ours, or the Azure LLM inference trace as published), sorted by time."""
    name = str(path)
    try:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(name, "rt", encoding="utf-8", newline="") as f:
            return parse_trace(f.read(), name)
    except FileNotFoundError:
        hint = ""
        stem = Path(name).stem
        from .synthetic import SYNTHETIC

        if stem in SYNTHETIC or not Path(name).suffix:
            hint = f"; for generated traffic use --synthetic {stem if stem in SYNTHETIC else 'MODEL'} ({', '.join(sorted(SYNTHETIC))})"
        raise TraceError([f"{name}:1: cannot read the trace: no such file{hint}"]) from None
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
    unknown = [] if azure else sorted(set(header) - set(COLUMNS))
    if unknown:
        raise TraceError([f"{name}:1: unknown column(s) {', '.join(unknown)}; known: {', '.join(sorted(COLUMNS))}"])
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
    return _close_sessions(sorted(rows, key=lambda r: r.t))


def _close_sessions(rows: list[Row]) -> list[Row]:
    """A session's page closes once: the latest `closed` given on any of its rows holds for all."""
    closed: dict[str, float] = {}
    for r in rows:
        if r.session and r.closed is not None:
            closed[r.session] = max(closed.get(r.session, r.closed), r.closed)
    if not closed:
        return rows
    return [replace(r, closed=closed.get(r.session)) if r.session in closed else r for r in rows]


def _row(raw: dict[str, str | None], line: int) -> Row:
    def cell(key: str) -> str:
        return (raw.get(key) or "").strip()

    closed = cell("closed")
    return Row(
        t=parse_time(cell("timestamp")),
        task=cell("task"),
        mode=cell("mode"),
        tier=cell("tier"),
        duration_s=_number(cell("duration_s"), "duration_s", float),
        prompt_tokens=_number(cell("prompt_tokens"), "prompt_tokens", int),
        output_tokens=_number(cell("output_tokens"), "output_tokens", int),
        line=line,
        session=cell("session"),
        closed=_closed(closed) if closed else None,
        intent_s=_number(cell("intent_s"), "intent_s", float),
    )


def _closed(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ValueError(f"closed: {exc}") from None


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
    from .. import routing
    from ..errors import BadRequest, TierUnavailable

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
        out.append(Request(row.t, tier, service_seconds(row, cfg.tiers[tier]), row.session, row.closed, row.intent_s))
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


def write_trace(rows: Iterable[Row], path: str | Path) -> int:
    """Save rows as a CSV trace `--trace` reads back (ISO 8601 UTC times); returns rows written."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for r in rows:
            out.writerow([_iso(r.t), r.task, r.mode, r.tier, _cell(r.duration_s), _cell(r.prompt_tokens),
                          _cell(r.output_tokens), r.session, "" if r.closed is None else _iso(r.closed), _cell(r.intent_s)])
            n += 1
    return n


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cell(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:g}" if isinstance(v, float) else str(v)


# --- tiergate export-trace ---------------------------------------------------------------


async def export_trace(redis, out: Path, since: float | None) -> int:
    """Write the gateway's request log (`tg:trace`) as a CSV trace `simulate --trace` reads; returns rows.

    Entries are XADDed by the gateway with string fields `t`, `tier`, `task`, `mode`,
    `session`, `duration_s`, `prompt_tokens`, `output_tokens`, `cache`. Cache hits never
    reached a GPU, so they are left out. Two optional entry kinds carry the UI's signals:
    `event=close` (`t`, `session`: the page closed) and `event=intent` (`t`, `tier`,
    `session`: a file was attached), matched to that session's next request on the tier.
    """
    start = "-" if since is None else f"{max(0, int(since * 1000))}-0"
    requests: list[Row] = []
    closes: dict[str, float] = {}
    intents: dict[tuple[str, str], float] = {}
    while True:
        batch = await redis.xrange(TRACE_STREAM, min=start, max="+", count=5000)
        if not batch:
            break
        for entry_id, fields in batch:
            _take(fields, requests, closes, intents)
        last = batch[-1][0]
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"
        if len(batch) < 5000:
            break
    rows = [replace(r, closed=closes.get(r.session)) if r.session in closes else r for r in requests]
    return write_trace(sorted(rows, key=lambda r: r.t), out)


def _take(fields: dict[str, str], requests: list[Row], closes: dict[str, float], intents: dict[tuple[str, str], float]) -> None:
    """One stream entry into the rows being built; a malformed entry is skipped, not fatal."""
    try:
        t = float(fields.get("t", ""))
    except ValueError:
        return
    event, session, tier = fields.get("event", "request"), fields.get("session", ""), fields.get("tier", "")
    if event == "close":
        if session:
            closes[session] = max(closes.get(session, t), t)
        return
    if event == "intent":
        if session:
            intents[(session, tier)] = t
        return
    if fields.get("cache") == "hit":
        return
    intent = intents.pop((session, tier), None) if session else None
    lead = t - intent if intent is not None and 0 <= t - intent <= INTENT_WINDOW else None

    def num(key: str, kind: type) -> float | int | None:
        try:
            value = kind(float(fields[key])) if fields.get(key, "") != "" else None
        except (ValueError, OverflowError):
            return None
        return value if value is None or value >= 0 else None

    requests.append(Row(t=t, task=fields.get("task", ""), mode=fields.get("mode", ""), tier=tier,
                        duration_s=num("duration_s", float), prompt_tokens=num("prompt_tokens", int),
                        output_tokens=num("output_tokens", int), session=session, intent_s=lead))


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE", required=True, help="where to write the CSV trace")
    parser.add_argument("--since", metavar="WHEN", help="only requests from this time on: epoch seconds, ISO 8601, or a "
                        "duration back from now such as 7d")
