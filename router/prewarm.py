"""Pre-warm windows: when a tier should already be up before anyone asks.

A scheduled window (`prewarm = [{cron = "0 9 * * 1-5", for = "9h"}]`) starts at each cron
fire time and lasts `for`. The machine needs `boot_seconds` to come up, so the tier is held
up over `[fire - boot_seconds, fire + for)`: started that much ahead, ready at the fire time.
Crons are read in the timezone of the `now` passed in; the gateway passes UTC.

Predicted windows (`prewarm_predict = true`) come from arrival history: an hour of the week
is *regular* when the tier had at least one arrival in that hour in >= 3 of the 4 previous
weeks, and a regular hour is held up like a scheduled one-hour window (with the same boot
lead). Both the gateway's supervisor and the simulator ask this module, so what is simulated
is what runs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, tzinfo

from croniter import croniter

from .config import TierConfig

HOUR = 3600.0
WEEK = 7 * 86400.0
PREDICT_WEEKS = 4  # look back this many weeks ...
PREDICT_MIN_WEEKS = 3  # ... and call an hour regular when used in at least this many of them
NEXT_WINDOW_HORIZONS = (8 * 86400.0, 400 * 86400.0)  # search a week ahead first, then a year

Interval = tuple[float, float]  # [start, end) in epoch seconds


def in_window(tier: TierConfig, now: datetime, history: Sequence[float] = ()) -> bool:
    """Should the tier be up now (started if stopped, never idled out)?

    `history`: epoch seconds of the tier's past arrivals, for predicted windows; the caller
    passes what it has (nothing turns prediction off).
    """
    now = _aware(now)
    boot = timedelta(seconds=tier.boot_seconds)
    for window in tier.prewarm:
        fire = _last_fire(window.cron, now + boot)
        if fire is not None and now < fire + timedelta(seconds=window.for_):
            return True
    if tier.prewarm_predict and history:
        arrivals = sorted(history)
        t = now.timestamp()
        # the current hour, and the next one if its boot lead has already begun
        for slot in {_hour_floor(t), _hour_floor(t + tier.boot_seconds)}:
            if regular_hour(arrivals, slot):
                return True
    return False


def next_window(tier: TierConfig, now: datetime, history: Sequence[float] = ()) -> tuple[datetime, datetime] | None:
    """The window that holds `now`, or else the next one, as (start incl. boot lead, end); None if none.

    Overlapping or touching windows are merged, so the end is when the tier may idle out again.
    """
    now = _aware(now)
    t = now.timestamp()
    arrivals = sorted(history)
    for horizon in NEXT_WINDOW_HORIZONS:
        for start, end in windows(tier, t, t + horizon, arrivals):
            if end > t:
                return _at(start, now.tzinfo), _at(end, now.tzinfo)
    return None


def windows(tier: TierConfig, start: float, end: float, history: Sequence[float] = ()) -> list[Interval]:
    """Every window overlapping [start, end), merged and sorted, in epoch seconds.

    `history` must be ascending epoch seconds; an hour is judged only on arrivals before it.
    """
    found: list[Interval] = []
    tz = UTC
    for window in tier.prewarm:
        for fire in _fires(window.cron, _at(start - window.for_, tz), _at(end + tier.boot_seconds, tz)):
            s, e = fire.timestamp() - tier.boot_seconds, fire.timestamp() + window.for_
            if e > start and s < end:
                found.append((s, e))
    if tier.prewarm_predict and history:
        slot = _hour_floor(start)
        while slot - tier.boot_seconds < end:
            if slot + HOUR > start and regular_hour(history, slot):
                found.append((slot - tier.boot_seconds, slot + HOUR))
            slot += HOUR
    return merge(found)


def regular_hour(arrivals: Sequence[float], slot: float) -> bool:
    """Was the hour starting at `slot` used in >= PREDICT_MIN_WEEKS of the PREDICT_WEEKS weeks before?

    `arrivals` ascending epoch seconds; O(weeks * log n), so a supervisor may ask every second.
    """
    used = 0
    for week in range(1, PREDICT_WEEKS + 1):
        lo = slot - week * WEEK
        i = bisect.bisect_left(arrivals, lo)
        if i < len(arrivals) and arrivals[i] < lo + HOUR:
            used += 1
    return used >= PREDICT_MIN_WEEKS


def regular_hours(arrivals: Sequence[float], now: datetime) -> set[tuple[int, int]]:
    """(weekday, hour) slots of the coming week that count as regular; for display and docs."""
    now = _aware(now)
    ordered = sorted(arrivals)
    first = _hour_floor(now.timestamp())
    out: set[tuple[int, int]] = set()
    for k in range(7 * 24):
        slot = first + k * HOUR
        if regular_hour(ordered, slot):
            when = _at(slot, now.tzinfo)
            out.add((when.weekday(), when.hour))
    return out


def merge(intervals: list[Interval]) -> list[Interval]:
    """Sorted, with overlapping or touching intervals joined."""
    out: list[Interval] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _fires(expr: str, after: datetime, before: datetime, limit: int = 200_000) -> Iterator[datetime]:
    """Cron fire times in [after, before); bounded so a `* * * * * *` cron cannot hang a replay."""
    it = croniter(expr, after - timedelta(seconds=1))
    for _ in range(limit):
        fire = it.get_next(datetime)
        if fire >= before:
            return
        if fire >= after:
            yield fire


def _last_fire(expr: str, at: datetime) -> datetime | None:
    """The latest fire time <= `at` (croniter's get_prev is strict, hence the extra second)."""
    it = croniter(expr, at + timedelta(seconds=1))
    for _ in range(3):
        fire = it.get_prev(datetime)
        if fire <= at:
            return fire
    return None


def _aware(now: datetime) -> datetime:
    """A naive datetime is taken as UTC, the gateway's clock."""
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _at(t: float, tz: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(t, tz or UTC)


def _hour_floor(t: float) -> float:
    return t - t % HOUR
