"""The virtual-clock tier: one instance driven by `router.decide.decide`, on event times.

Nothing sleeps. The clock jumps from event to event (an arrival, an intent, a page closing,
the end of a boot or of the last answer) and to the times `decide` itself names (a keep
action's `until`, the next hour of the week, an asker ageing out), and at each of them the
tier asks `decide` what to do, exactly as the gateway's supervisor does once a second. The
simulator holds the facts and the history the gateway would hold in Redis; the decision is
the gateway's own function.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .. import prewarm
from ..config import TierConfig
from ..decide import (
    ASKER_WINDOW,
    HOUR,
    Action,
    Asker,
    History,
    InstanceFacts,
    TierFacts,
    boot_eta,
    decide,
    standby_break_even,
)
from ..machine import InstanceState
from .trace import Request

GAP_MIN = 1.0  # shorter idle gaps are not recorded (as in state.note_arrival)
GAP_HISTORY = 500  # the gateway keeps this many gaps
VISIT_GAP = 1800.0  # an asker not seen for this long starts a new visit
INSTANCE = "sim-0"

Decider = Callable[[TierConfig, TierFacts, float, History], list[Action]]
BootFn = Callable[[bool], float]  # (from standby) -> boot seconds


@dataclass
class TierRun:
    """What one tier did over the replay."""

    gpu_seconds: float = 0.0
    starts: int = 0
    waits: list[float] = field(default_factory=list)
    standby_seconds: float = 0.0  # stopped in standby, billed at the standby price
    intent_starts: int = 0  # starts caused by an intent (a file attached) rather than a request

    def cost(self, tier: TierConfig) -> float:
        return (self.gpu_seconds * tier.price_per_hour + self.standby_seconds * tier.standby_price_per_hour) / 3600


class TierSim:
    """One tier's instance as the gateway runs it: stopped -> starting -> ready -> stopped (or standby)."""

    def __init__(self, tier: TierConfig, boot: BootFn, t0: float, decider: Decider = decide, *,
                 intents: bool | None = None, windows: Sequence[prewarm.Interval] = ()) -> None:
        self.tier, self.boot, self.decider = tier, boot, decider
        self.intents = tier.warm_on_intent if intents is None else intents
        self.now = t0
        self.state = InstanceState.STOPPED
        self.up_since = 0.0
        self.ready_at = -math.inf
        self.boot_started = 0.0
        self.busy_until = -math.inf  # when everything in flight has ended
        self.standby_since = 0.0
        self.gaps: deque[tuple[float, float]] = deque(maxlen=GAP_HISTORY)  # (ended, length), newest first
        self.boots: deque[float] = deque(maxlen=10)
        self.cold_waits: deque[float] = deque(maxlen=20)
        self._cold = False
        self.arrivals: list[float] = []  # arrivals at an idle tier, ascending
        self.visits: list[float] = []
        self.askers: dict[str, list[float]] = {}  # session -> [last_seen, closed (inf while open, nan unknown)]
        self.run = TierRun()
        self._check = math.inf  # when decide must be asked again if nothing happens
        self._window_starts = sorted(s for s, _ in windows)
        self._last_seen: dict[str, float] = {}

    # --- events ---------------------------------------------------------------------------

    def intent(self, t: float, session: str = "") -> None:
        """The UI saw a request coming (a file attached): boot now if stopped, as warm_on_intent does.

        The asker's page is open (they are attaching a file), so they count as present.
        """
        self.advance(t)
        if session:
            entry = self.askers.setdefault(session, [t, math.inf])
            entry[0], entry[1] = max(entry[0], t), math.inf
        if self.intents and self.state == InstanceState.STOPPED:
            self._start(t)
            self.run.intent_starts += 1
        self._decide(t)

    def close(self, t: float, session: str) -> None:
        self.advance(t)
        if session in self.askers:
            self.askers[session][1] = t
        self._decide(t)

    def arrive(self, r: Request) -> None:
        t = r.t
        self.advance(t)
        idle = self.busy_until <= t
        if idle and self.busy_until > -math.inf and t - self.busy_until > GAP_MIN:
            self.gaps.appendleft((t, t - self.busy_until))
        if idle:
            self.arrivals.append(t)
        if r.session:
            if t - self._last_seen.get(r.session, -math.inf) > VISIT_GAP:
                self.visits.append(t)
            self._last_seen[r.session] = t
        elif idle:
            self.visits.append(t)
        if self.state == InstanceState.STOPPED:
            self._start(t)
        begin = max(t, self.ready_at)
        self.run.waits.append(begin - t)
        if self._cold:  # the first request since a cold start: how long a restart made someone wait
            self.cold_waits.appendleft(begin - t)
            self._cold = False
        self.busy_until = max(self.busy_until, begin + r.service)
        if r.session:
            closed = math.nan if r.closed is None else (r.closed if r.closed <= t else math.inf)
            entry = self.askers.setdefault(r.session, [0.0, closed])
            entry[0] = max(entry[0], begin + r.service)
            if r.closed is not None and r.closed > t:
                entry[1] = math.inf  # open now; its close is a separate event
        self._decide(t)

    def finish(self, end: float) -> TierRun:
        """Play out to the end; a tier still up runs out its keep-alive (that is billed too)."""
        self.advance(end)
        for _ in range(10_000):
            if self.state == InstanceState.STOPPED:
                break
            if self.state == InstanceState.STARTING:
                self.advance(self.ready_at + 1e-9)
                continue
            if not math.isfinite(self._check):  # held with no end in sight (a window past the trace): stop at the end
                self._stop(max(end, self.now, self.busy_until, self.ready_at), False)
                break
            self.advance(self._check + 1e-6)
        if self.standby_since:
            self._end_standby(max(end, self.now))
        return self.run

    # --- the clock --------------------------------------------------------------------------

    def advance(self, t: float) -> None:
        """Everything the supervisor would do before `t`: decisions at the times they fall due."""
        while True:
            if self.state == InstanceState.STARTING and self.ready_at <= t:
                self.state = InstanceState.READY
                self.now = max(self.now, self.ready_at)
                self._decide(self.now)
                continue
            nxt = self._next_check()
            if nxt < t:
                self.now = max(self.now, nxt)
                self._check = math.inf
                self._decide(self.now)
                continue
            break
        self.now = max(self.now, t)

    def _next_check(self) -> float:
        if self.state == InstanceState.STOPPED and self._window_starts:
            i = bisect.bisect_right(self._window_starts, self.now)
            if i < len(self._window_starts):
                return min(self._check, self._window_starts[i])
        return self._check

    def _decide(self, now: float) -> None:
        """Ask decide and carry out its actions; remember when to ask again."""
        actions = self.decider(self.tier, self._facts(now), now, self._history(now))
        due = math.inf
        for a in actions:
            if a.kind == "start" and self.state == InstanceState.STOPPED:
                self._start(now)
                return self._decide(now)
            if a.kind == "stop" and a.instance == INSTANCE:
                if self.state == InstanceState.READY and self.busy_until <= now:
                    self._stop(now, a.standby)
                    return self._decide(now)
                if self.state == InstanceState.STOPPED and self.standby_since:
                    self._end_standby(now)
            if a.kind == "keep" and math.isfinite(a.until):
                due = min(due, max(a.until, now + 1e-3))  # the supervisor asks again a moment later
        if self.state == InstanceState.READY and self.busy_until > now:
            due = min(due, self.busy_until)
        if self.state == InstanceState.READY and self.tier.policy != "fixed":
            due = min(due, now - now % HOUR + HOUR)  # the hour of the week changes the histogram
            due = min(due, self._asker_expiry(now))
        if self.state == InstanceState.STOPPED and self.standby_since:
            due = min(due, self.standby_since + standby_break_even(self.tier, boot_eta(self.tier, self.boots)))
        if self.state == InstanceState.STOPPED and self.tier.prewarm_predict:
            lead = self.tier.boot_seconds
            slot = now - now % HOUR + HOUR
            due = min(due, slot - lead if slot - lead > now else slot + HOUR - lead)
        self._check = due
        return None

    def _asker_expiry(self, now: float) -> float:
        out = math.inf
        for last_seen, closed in self.askers.values():
            for t in (last_seen + ASKER_WINDOW, closed + ASKER_WINDOW):
                if now < t < out:
                    out = t
        return out

    def _facts(self, now: float) -> TierFacts:
        inflight = 1 if self.state == InstanceState.READY and self.busy_until > now else 0
        last_active = max(self.busy_until, self.ready_at) if self.state == InstanceState.READY else 0.0
        inst = InstanceFacts(INSTANCE, self.state, inflight, last_active,
                             self.boot_started if self.state != InstanceState.STOPPED else 0.0,
                             True, self.standby_since)
        return TierFacts((inst,))

    def _history(self, now: float) -> History:
        askers = []
        for session, (last_seen, closed) in list(self.askers.items()):
            if now - last_seen > ASKER_WINDOW and not (math.isfinite(closed) and now - closed <= ASKER_WINDOW):
                if last_seen < now and not closed > now + ASKER_WINDOW:  # gone for good unless they ask again
                    del self.askers[session]
                continue
            if math.isnan(closed):
                askers.append(Asker(min(last_seen, now), False))
            elif closed > now:
                askers.append(Asker(min(last_seen, now), True))
            else:
                askers.append(Asker(min(last_seen, now), False, closed))
        return History(gaps=self.gaps, boots=tuple(self.boots), arrivals=self.arrivals, askers=askers, visits=self.visits,
                       cold_waits=tuple(self.cold_waits))

    # --- transitions --------------------------------------------------------------------------

    def _start(self, at: float) -> None:
        quick = bool(self.standby_since)
        if quick:
            self._end_standby(at)
        boot = self.boot(quick)
        self.state = InstanceState.STARTING
        self.up_since, self.boot_started, self.ready_at = at, at, at + boot
        if not quick:
            self.boots.appendleft(boot)
        self._cold = True
        self.run.starts += 1
        self.now = max(self.now, at)

    def _stop(self, at: float, standby: bool) -> None:
        self.run.gpu_seconds += at - self.up_since
        self.state = InstanceState.STOPPED
        self.now = at
        self.standby_since = at if standby else 0.0

    def _end_standby(self, at: float) -> None:
        self.run.standby_seconds += max(0.0, at - self.standby_since)
        self.standby_since = 0.0


def play(tier: TierConfig, reqs: Sequence[Request], start: float, end: float, boot: BootFn, decider: Decider = decide,
         *, intents: bool | None = None, use_prewarm: bool = True) -> TierRun:
    """Replay one tier's requests (with their intents and page closes) and return what it did."""
    if tier.always_on:  # only static URLs: someone else's machine that never stops; its hours still count
        return TierRun(gpu_seconds=end - start, waits=[0.0] * len(reqs))
    if not use_prewarm:
        tier = tier.model_copy(update={"prewarm": [], "prewarm_predict": False})
    history = [r.t for r in reqs]
    windows = prewarm.windows(tier, start, end, history) if tier.prewarm else []
    sim = TierSim(tier, boot, start, decider, intents=intents, windows=windows)
    use_intents = sim.intents
    events: list[tuple[float, int, int, str]] = []  # (time, order, index, session): closes, intents, arrivals
    closes: dict[str, float] = {}
    for i, r in enumerate(reqs):
        if use_intents and r.intent_s:
            events.append((r.t - r.intent_s, 1, i, ""))
        events.append((r.t, 2, i, ""))
        if r.session and r.closed is not None:
            closes[r.session] = r.closed
    events += [(t, 0, -1, s) for s, t in closes.items()]
    heapq.heapify(events)
    while events:
        t, kind, i, session = heapq.heappop(events)
        if kind == 0:
            sim.close(t, session)
        elif kind == 1:
            sim.intent(t, reqs[i].session)
        else:
            sim.arrive(reqs[i])
    return sim.finish(end)
