"""What a tier should do now: one pure function, called by the gateway's supervisor and by the simulator.

`decide(tier, facts, now, history)` looks at a tier's instances and what the gateway has
learnt about its traffic and returns actions (start, stop, keep, ...) for the caller to
carry out. It does no I/O and reads no clock (`now` is an argument), so the supervisor runs
it once a second against Redis and `tiergate simulate` runs the very same function on a
virtual clock: what is simulated is what runs.

The idle rule of `policy = "adaptive"` (issue #12) uses what only a gateway knows:

* **The gaps it has seen.** While anyone may still come back, the keep-alive is the
  ski-rental argmin (`policy.best_keep_alive`) over the last 500 idle gaps.
* **Open pages and the time of week.** When every recent asker of the tier has closed their
  page (the UI knows), the next request needs a new visit: the tier stops at once, unless
  the visit rate forecast for this hour of the week (the same hour of the last four weeks)
  makes staying up cheaper than a restart.
* **What a restart really costs.** A restart is priced by the wait it causes, measured: the
  first waits after recent cold starts, shorter than the boot when warm-on-intent starts it
  while the user types.
* **A cheaper stop state.** Where the provider has a standby (`standby_price_per_hour`,
  `standby_boot_seconds`), a stop goes to standby when the gaps that outlast the keep-alive
  make that cheaper in expectation, and a standby instance is fully stopped at its own
  break-even.

Pre-warm windows (cron and `prewarm_predict`) come from `router/prewarm.py` unchanged.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from . import policy, prewarm
from .config import TierConfig
from .machine import InstanceState

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY
ASKER_WINDOW = HOUR  # an asker whose last answer ended longer ago than this is not "around"
FORECAST_WEEKS = 4  # the visit-rate forecast averages this many past weeks
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class InstanceFacts:
    id: str
    state: InstanceState
    inflight: int = 0  # live leases (requests being answered)
    last_active: float = 0.0  # epoch s: when its last request ended (or it became ready)
    boot_started: float = 0.0  # epoch s: when its current start began; 0 if stopped
    billed: bool = True  # False for always-on (static) instances: never started or stopped by tiergate
    standby_since: float = 0.0  # epoch s it entered the provider's standby stop; 0 if not in standby
    for_requests: bool = False  # started because requests asked (not an admin, a window or intent)


@dataclass(frozen=True)
class TierFacts:
    instances: tuple[InstanceFacts, ...]
    queued: int = 0  # requests waiting for the tier to become ready


@dataclass(frozen=True)
class Asker:
    """A recent caller of this tier: a UI session, or an API caller (key / `user` field)."""

    last_seen: float  # epoch s when their last answer ended
    present: bool  # their page is still open (UI); False when unknown (API)
    closed: float = 0.0  # epoch s their page closed (UI); 0 while open or when unknown


@dataclass(frozen=True)
class History:
    gaps: Sequence[tuple[float, float]] = ()  # (epoch s when the idle gap ended, its length s), newest first, <= 500
    boots: Sequence[float] = ()  # recent cold-start seconds, newest first
    arrivals: Sequence[float] = ()  # epoch s of arrivals at an idle tier, ascending (for forecasts)
    askers: Sequence[Asker] = ()
    visits: Sequence[float] = ()  # epoch s of first requests of new askers, ascending (visit-rate forecast)
    cold_waits: Sequence[float] = ()  # s the first request after each cold start waited, newest first


@dataclass(frozen=True)
class Action:
    kind: Literal["start", "stop", "force_stop", "give_up_boot", "scale_out", "keep"]
    instance: str = ""  # which instance (not for start/scale_out)
    reason: str = ""  # human words for the event log and the admin dashboard
    keep_alive: float = 0.0  # stop/keep: the keep-alive in force (s); the gateway re-checks idle >= it atomically
    until: float = 0.0  # keep: epoch s when this instance would stop if nothing changes (math.inf if never)
    standby: bool = False  # stop: use the provider's cheaper-to-restart stop (e.g. ECS KeepCharging)


@dataclass(frozen=True)
class KeepAlive:
    """The idle rule's answer for this moment: how long an idle instance stays up, and why."""

    seconds: float
    reason: str
    standby: bool = False  # when it stops, stop to standby
    remaining: tuple[float, ...] = field(default=(), repr=False)  # gaps beyond the keep-alive, for standby


def decide(tier: TierConfig, facts: TierFacts, now: float, history: History) -> list[Action]:
    """The actions the tier needs now; an empty list means nothing to do (nothing is up)."""
    actions: list[Action] = []
    boot = boot_eta(tier, history.boots)
    held, window_end = _window(tier, now, history)
    ready = [i for i in facts.instances if i.state == InstanceState.READY]
    starting = [i for i in facts.instances if i.state == InstanceState.STARTING]

    for inst in starting:
        if inst.billed and inst.boot_started and now - inst.boot_started >= tier.boot_timeout:
            actions.append(Action("give_up_boot", inst.id, f"no ready worker after boot_timeout {_fmt(tier.boot_timeout)}"))
        elif inst.billed and inst.for_requests and facts.queued == 0:
            # every request that asked for this boot gave up (Stop, a closed page): nobody pays for it
            actions.append(Action("give_up_boot", inst.id, "nobody is waiting for it any more"))

    if held and not ready and not starting and any(i.state == InstanceState.STOPPED and i.billed for i in facts.instances):
        actions.append(Action("start", reason=held))

    full = bool(ready) and all(i.inflight >= tier.max_inflight_per_instance for i in ready)
    spare = any(i.state == InstanceState.STOPPED and i.billed for i in facts.instances)
    if tier.max_inflight_per_instance and full and spare and not starting:
        actions.append(Action("scale_out", reason=f"every ready instance serves {tier.max_inflight_per_instance} requests"))

    keep: KeepAlive | None = None
    for inst in ready:
        if not inst.billed:
            continue
        if tier.max_runtime and inst.boot_started and now - inst.boot_started >= tier.max_runtime:
            actions.append(Action("force_stop", inst.id, f"max_runtime {_fmt(tier.max_runtime)} reached"))
            continue
        if keep is None:
            keep = keep_alive(tier, now, history, boot)
        idle_from = inst.last_active
        if inst.inflight > 0:
            actions.append(Action("keep", inst.id, f"serving {inst.inflight} request(s); then {keep.reason}",
                                  keep.seconds, math.inf))
        elif held:
            until = max(window_end, idle_from + keep.seconds)
            actions.append(Action("keep", inst.id, f"{held}; then {keep.reason}", keep.seconds, until))
        elif now - idle_from >= keep.seconds - 1e-6:  # float rounding must not postpone a due stop
            how = "to standby" if keep.standby else ""
            actions.append(Action("stop", inst.id, " ".join(filter(None, [f"idle {_fmt(now - idle_from)}:", keep.reason, how])),
                                  keep.seconds, standby=keep.standby))
        else:
            actions.append(Action("keep", inst.id, keep.reason, keep.seconds, idle_from + keep.seconds))

    if _has_standby(tier, boot):
        limit = standby_break_even(tier, boot)
        for inst in facts.instances:
            if inst.state == InstanceState.STOPPED and inst.standby_since and now - inst.standby_since >= limit - 1e-6:
                actions.append(Action("stop", inst.id, f"in standby {_fmt(now - inst.standby_since)}: a full stop is cheaper now"))
    return actions


def boot_eta(tier: TierConfig, boots: Sequence[float]) -> float:
    """Median of the last ten cold starts, or the configured estimate before there is any history."""
    recent = list(itertools.islice(boots, 10))  # a list, a tuple or a deque
    return statistics.median(recent) if recent else tier.boot_seconds


def keep_alive(tier: TierConfig, now: float, history: History, boot: float | None = None) -> KeepAlive:
    """How long an idle instance of the tier stays up at `now`, and the reason in words."""
    if boot is None:
        boot = boot_eta(tier, history.boots)
    if tier.policy == "fixed":
        return KeepAlive(tier.idle_timeout, f"fixed idle_timeout: keep {_fmt(tier.idle_timeout)}")
    wait_cost = policy.effective_wait_cost(tier, boot) * restart_wait(history, boot) / boot if boot > 0 else 0.0
    price = tier.price_per_hour
    hist = _histogram_keep(tier, history, boot, wait_cost)
    around, unknown, closed = _askers(history.askers, now)
    if not around and not unknown and closed:
        rate = visit_rate(history.visits or history.arrivals, now)
        g_star = policy.break_even_gap(price, boot, wait_cost)
        if rate * g_star < 1:  # fewer than one new visit per break-even gap: a restart is cheaper than waiting
            return _with_standby(tier, boot, wait_cost, KeepAlive(
                0.0, f"every page closed; {rate * HOUR:.1f} new visits/h expected at {_slot_name(now)}: stop now"), rate)
        return _with_standby(tier, boot, wait_cost, KeepAlive(
            hist.seconds, f"every page closed, but {rate * HOUR:.1f} new visits/h expected at {_slot_name(now)}; {hist.reason}",
            remaining=hist.remaining))
    if around:
        hist = KeepAlive(hist.seconds, f"{len(around)} page(s) open; {hist.reason}", remaining=hist.remaining)
    return _with_standby(tier, boot, wait_cost, hist)


def restart_wait(history: History, boot: float) -> float:
    """How long a restart makes its first user wait: the boot, less the warning intents give.

    The restart cost prices the wait a stop causes; with warm-on-intent the UI starts the
    boot while the user types, so the measured first waits after cold starts are the truth.
    """
    recent = list(itertools.islice(history.cold_waits, 20))
    return min(boot, statistics.median(recent)) if recent else boot


_CACHE: OrderedDict[tuple, KeepAlive] = OrderedDict()
_CACHE_SIZE = 64


def _histogram_keep(tier: TierConfig, history: History, boot: float, wait_cost: float) -> KeepAlive:
    """The ski-rental keep-alive over the recent idle gaps (`policy.best_keep_alive`, with its margin).

    Cached on the gap history's length and its three newest and oldest entries (new gaps only
    ever join at the head), so the supervisor's once-a-second call costs a lookup until a gap
    arrives.
    """
    gaps = history.gaps
    if len(gaps) < policy.MIN_GAPS:
        return KeepAlive(tier.idle_timeout, f"{len(gaps)} gaps seen, too few to learn from: keep idle_timeout {_fmt(tier.idle_timeout)}")
    n = len(gaps)
    ends = tuple(tuple(gaps[i]) for i in (0, 1, 2, n - 3, n - 2, n - 1))  # deques index but do not slice
    key = (tier.price_per_hour, boot, wait_cost, tier.idle_timeout, n, ends)
    found = _CACHE.get(key)
    if found is None:
        lengths = [g for _end, g in gaps]
        k = policy._adaptive(tier.price_per_hour, boot, wait_cost, tuple(lengths))
        share = sum(1 for g in lengths if g <= k) / len(lengths)
        remaining = tuple(sorted(g - k for g in lengths if g > k))
        found = _CACHE[key] = KeepAlive(k, f"{share:.0%} of the last {len(lengths)} gaps < {_fmt(k)}: keep {_fmt(k)}",
                                        remaining=remaining)
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return found


def _askers(askers: Sequence[Asker], now: float) -> tuple[list[Asker], list[Asker], list[Asker]]:
    """Recent askers split into: page open, unknown (API callers), page closed."""
    around, unknown, closed = [], [], []
    for a in askers:
        if now - a.last_seen > ASKER_WINDOW and not (a.closed and now - a.closed <= ASKER_WINDOW):
            continue
        if a.present:
            around.append(a)
        elif a.closed:
            closed.append(a)
        else:
            unknown.append(a)
    return around, unknown, closed


def visit_rate(times: Sequence[float], now: float) -> float:
    """New visits per second expected in this hour of the week: the mean of the same hour in past weeks.

    `times` ascending epoch seconds. Weeks before the first record do not count, so a young
    history is not read as silence.
    """
    if not times:
        return 0.0
    slot = now - now % HOUR
    weeks = 0
    count = 0
    for w in range(1, FORECAST_WEEKS + 1):
        lo = slot - w * WEEK
        if lo + HOUR <= times[0]:
            break
        weeks += 1
        count += bisect.bisect_left(times, lo + HOUR) - bisect.bisect_left(times, lo)
    return count / (weeks * HOUR) if weeks else 0.0


def _has_standby(tier: TierConfig, boot: float) -> bool:
    return 0 < tier.standby_boot_seconds < boot and tier.standby_price_per_hour < tier.price_per_hour


def standby_break_even(tier: TierConfig, boot: float) -> float:
    """Seconds in standby after which a full stop would have been cheaper (ski rental, second state)."""
    wait = policy.effective_wait_cost(tier, boot)
    saved = policy.restart_cost(tier.price_per_hour, boot, wait) - policy.restart_cost(
        tier.price_per_hour, tier.standby_boot_seconds, wait)
    if tier.standby_price_per_hour <= 0:
        return math.inf
    return saved * HOUR / tier.standby_price_per_hour


def _with_standby(tier: TierConfig, boot: float, wait_cost: float, keep: KeepAlive, rate: float | None = None) -> KeepAlive:
    """Mark the stop as a standby stop when the gaps that outlast the keep-alive make it cheaper."""
    if not _has_standby(tier, boot):
        return keep
    price, s = tier.price_per_hour / HOUR, tier.standby_price_per_hour / HOUR
    full = policy.restart_cost(tier.price_per_hour, boot, wait_cost)
    quick = policy.restart_cost(tier.price_per_hour, tier.standby_boot_seconds, wait_cost)
    limit = standby_break_even(tier, boot)
    if rate is not None:  # nobody is around: the next gap is a new visit, exponential at `rate`
        if rate <= 0:
            return keep
        p_back = 1 - math.exp(-rate * limit)
        expected = s * p_back / rate + quick * p_back + full * (1 - p_back)
    elif keep.remaining:
        expected = statistics.fmean(s * min(r, limit) + (quick if r <= limit else full) for r in keep.remaining)
    else:
        return keep
    if expected < full and price > 0:
        return KeepAlive(keep.seconds, keep.reason, True, keep.remaining)
    return keep


_WINDOWS: OrderedDict[tuple, tuple[float, float, float, str]] = OrderedDict()


def _window(tier: TierConfig, now: float, history: History) -> tuple[str, float]:
    """(why the tier is held up, when the hold ends) inside a pre-warm window; ("", 0) outside.

    The current or next window is cached until it starts or ends (cron arithmetic is slow
    next to a once-a-second call), keyed on the settings and the arrival history's end.
    """
    if not tier.prewarm and not tier.prewarm_predict:
        return "", 0.0
    arrivals = history.arrivals if tier.prewarm_predict else ()
    key = (tuple((w.cron, w.for_) for w in tier.prewarm), tier.prewarm_predict, tier.boot_seconds,
           len(arrivals), arrivals[-1] if arrivals else 0.0)
    entry = _WINDOWS.get(key)
    if entry is None or not entry[0] <= now < _valid_until(entry):
        when = datetime.fromtimestamp(now, UTC)
        nxt = prewarm.next_window(tier, when, arrivals)
        start, end = (nxt[0].timestamp(), nxt[1].timestamp()) if nxt else (math.inf, math.inf)
        kind = ""
        if start <= now < end:
            scheduled = tier.prewarm and (not tier.prewarm_predict or _in_cron(tier, when))
            kind = "scheduled pre-warm window" if scheduled else "predicted busy hour"
        entry = _WINDOWS[key] = (now, start, end, kind)
        if len(_WINDOWS) > _CACHE_SIZE:
            _WINDOWS.popitem(last=False)
    _since, start, end, kind = entry
    if not start <= now < end:
        return "", 0.0
    return f"{kind} until {datetime.fromtimestamp(end, UTC):%a %H:%M} UTC", end


def _valid_until(entry: tuple[float, float, float, str]) -> float:
    """A cached window answers until its window starts (if it had not) or ends (if it had)."""
    since, start, end, _kind = entry
    return end if start <= since else start


def _in_cron(tier: TierConfig, when: datetime) -> bool:
    return prewarm.in_window(tier.model_copy(update={"prewarm_predict": False}), when)


def _slot_name(now: float) -> str:
    when = datetime.fromtimestamp(now, UTC)
    return f"{_DAYS[when.weekday()]} {when.hour:02d}h"


def _fmt(seconds: float) -> str:
    if math.isinf(seconds):
        return "forever"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"
