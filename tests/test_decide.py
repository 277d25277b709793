"""`decide`: the one function that says when a GPU starts and stops, tested on a fake clock.

It is pure (no Redis, no clock), so every case is a table row: a tier, its instances, a
moment and what the gateway has learnt, and the actions a user of the gateway would see.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from router import decide as d
from router.decide import Action, Asker, History, InstanceFacts, TierFacts, decide
from router.machine import InstanceState as S
from tests.test_policy import tier

MONDAY_2PM = datetime(2025, 1, 6, 14, 0, tzinfo=UTC).timestamp()
T = MONDAY_2PM + 1800  # Monday 14:30 UTC: "now" in most rows


def one(state: S = S.READY, **kw: object) -> TierFacts:
    return TierFacts((InstanceFacts("i-1", state, **kw),))  # type: ignore[arg-type]


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.kind, a.instance) for a in actions]


# --- the lifecycle rules, one row each ---------------------------------------------------

CASES = [
    # (why, tier settings, facts, now, expected (kind, instance) list)
    ("idle less than the timeout: keep", {}, one(last_active=T - 299), T, [("keep", "i-1")]),
    ("idle exactly the timeout: stop", {}, one(last_active=T - 300), T, [("stop", "i-1")]),
    ("a request in flight: keep, however long idle before", {}, one(inflight=1, last_active=T - 9999), T, [("keep", "i-1")]),
    ("always-on (static) instance: never stopped", {}, TierFacts((InstanceFacts("s", S.READY, last_active=T - 9999, billed=False),)), T, []),
    ("nothing up: nothing to do", {}, one(S.STOPPED), T, []),
    ("booting within boot_timeout: wait", {}, one(S.STARTING, boot_started=T - 299), T, []),
    ("booting past boot_timeout: give up", {}, one(S.STARTING, boot_started=T - 300), T, [("give_up_boot", "i-1")]),
    ("past max_runtime: forced stop even while serving", {"max_runtime": "1h"},
     one(inflight=3, boot_started=T - 3600, last_active=T), T, [("force_stop", "i-1")]),
    ("stopping: left alone", {}, one(S.STOPPING, last_active=T - 9999), T, []),
]


@pytest.mark.parametrize(("why", "settings", "facts", "now", "expected"), CASES, ids=[c[0] for c in CASES])
def test_lifecycle_rules(why: str, settings: dict, facts: TierFacts, now: float, expected: list) -> None:
    assert kinds(decide(tier(**settings), facts, now, History())) == expected, why


def test_keep_says_until_when_and_why() -> None:
    [keep] = decide(tier(idle_timeout="5m"), one(last_active=T - 100), T, History())
    assert keep.until == T + 200 and keep.keep_alive == 300
    assert "fixed idle_timeout: keep 5.0 min" in keep.reason
    [busy] = decide(tier(), one(inflight=2, last_active=T), T, History())
    assert busy.until == math.inf and "serving 2" in busy.reason


def test_scale_out_only_when_every_ready_instance_is_full() -> None:
    t = tier(max_inflight_per_instance=2)
    full = TierFacts((InstanceFacts("a", S.READY, inflight=2, last_active=T), InstanceFacts("b", S.STOPPED)))
    assert ("scale_out", "") in kinds(decide(t, full, T, History()))
    room = TierFacts((InstanceFacts("a", S.READY, inflight=1, last_active=T), InstanceFacts("b", S.STOPPED)))
    assert ("scale_out", "") not in kinds(decide(t, room, T, History()))
    no_spare = TierFacts((InstanceFacts("a", S.READY, inflight=2, last_active=T),))
    assert ("scale_out", "") not in kinds(decide(t, no_spare, T, History()))


def test_prewarm_window_starts_a_stopped_tier_and_holds_a_ready_one() -> None:
    t = tier(prewarm='[{cron = "0 9 * * 1-5", for = "9h"}]')
    [start] = decide(t, one(S.STOPPED), T, History())
    assert start.kind == "start" and "scheduled pre-warm window until Mon 18:00 UTC" in start.reason
    [keep] = decide(t, one(last_active=T - 3000), T, History())
    assert keep.kind == "keep" and keep.until == datetime(2025, 1, 6, 18, tzinfo=UTC).timestamp()
    evening = datetime(2025, 1, 6, 19, tzinfo=UTC).timestamp()
    assert kinds(decide(t, one(last_active=evening - 3000), evening, History())) == [("stop", "i-1")]


# --- the adaptive rule: signals a timeout ignores ------------------------------------------


def gaps_at(start_of_gap: float, length: float, n: int) -> list[tuple[float, float]]:
    """n gaps of `length` s that began at `start_of_gap` and the same time of the n-1 weeks before, newest first."""
    return [(start_of_gap - k * 7 * 86400 + length, length) for k in range(n)]


def test_adaptive_with_few_gaps_keeps_the_idle_timeout() -> None:
    [keep] = decide(tier(policy="adaptive"), one(last_active=T - 10), T, History(gaps=gaps_at(T, 60, 5)))
    assert keep.keep_alive == 300 and "too few" in keep.reason


def test_keep_alive_learnt_from_the_gaps_says_why() -> None:
    """Think times of ~1 min between requests, sessions hours apart: keep ~1 min, not 5, not 4 h."""
    gaps = [(T - 100 * k, 60.0 if k % 5 else 4 * 3600.0) for k in range(50)]
    [keep] = decide(tier(policy="adaptive"), one(last_active=T - 10), T, History(gaps=gaps))
    assert keep.keep_alive == pytest.approx(60 * 1.1)
    assert keep.reason == "80% of the last 50 gaps < 1.1 min: keep 1.1 min"
    assert keep.until == pytest.approx(T - 10 + 66)


def test_a_restart_is_priced_by_the_wait_it_really_causes() -> None:
    """4.5 min gaps: worth keeping on when a restart makes someone wait the whole 90 s boot, not
    when warm-on-intent has cut the measured first waits to 10 s (the break-even drops below 4.5 min)."""
    gaps = [(T - 1000 * k, 270.0) for k in range(30)]
    t = tier(policy="adaptive")
    [keep] = decide(t, one(last_active=T - 10), T, History(gaps=gaps))
    assert keep.kind == "keep" and keep.keep_alive == pytest.approx(270 * 1.1)
    [stop] = decide(t, one(last_active=T - 10), T, History(gaps=gaps, cold_waits=[10.0] * 5))
    assert stop.kind == "stop" and stop.keep_alive == 0


def test_every_page_closed_and_visits_rare_stops_at_once() -> None:
    history = History(gaps=[(T - 50 * k, 40.0) for k in range(30)],
                      askers=[Asker(T - 100, present=False, closed=T - 20)], visits=[T - 7 * 86400])
    [stop] = decide(tier(policy="adaptive"), one(last_active=T - 30), T, history)
    assert stop.kind == "stop" and stop.keep_alive == 0
    assert "every page closed" in stop.reason and "stop now" in stop.reason


def test_an_open_page_keeps_the_histogram_keep_alive() -> None:
    history = History(gaps=[(T - 50 * k, 40.0) for k in range(30)],
                      askers=[Asker(T - 100, present=False, closed=T - 20), Asker(T - 30, present=True)])
    [keep] = decide(tier(policy="adaptive"), one(last_active=T - 30), T, history)
    assert keep.kind == "keep" and keep.keep_alive == pytest.approx(44)
    assert "1 page(s) open" in keep.reason


def test_api_callers_of_unknown_presence_keep_the_histogram_keep_alive() -> None:
    history = History(gaps=[(T - 50 * k, 40.0) for k in range(30)], askers=[Asker(T - 30, present=False)])
    [keep] = decide(tier(policy="adaptive"), one(last_active=T - 30), T, history)
    assert keep.kind == "keep" and keep.keep_alive == pytest.approx(44)


def test_pages_closed_but_a_busy_hour_of_the_week_keeps_waiting_for_the_next_visitor() -> None:
    """20 new visitors every Monday 14h for four weeks: 20/h beats the 12/h a 5 min break-even needs."""
    visits = sorted(T - w * 7 * 86400 - 1800 + 180 * k for w in range(1, 5) for k in range(20))
    history = History(gaps=[(T - 50 * k, 40.0) for k in range(30)],
                      askers=[Asker(T - 100, present=False, closed=T - 20)], visits=visits)
    [keep] = decide(tier(policy="adaptive"), one(last_active=T - 30), T, history)
    assert keep.kind == "keep" and "20.0 new visits/h expected at Mon 14h" in keep.reason


def test_old_askers_do_not_count() -> None:
    """A closed page an hour and more ago says nothing about now: back to the histogram."""
    history = History(gaps=[(T - 50 * k, 40.0) for k in range(30)], askers=[Asker(T - 5000, False, closed=T - 4000)])
    [keep] = decide(tier(policy="adaptive"), one(last_active=T - 30), T, history)
    assert keep.kind == "keep"


# --- standby ------------------------------------------------------------------------------


def test_standby_stop_when_the_gaps_beyond_the_keep_alive_are_short_enough() -> None:
    """Gaps of 1 min or 10 min: keep 1 min, then standby (10% price, 20 s restart) beats a 90 s boot."""
    t = tier(policy="adaptive", standby_price_per_hour=0.28, standby_boot_seconds=20)
    gaps = [(T - 1000 * k, 60.0 if k % 2 else 600.0) for k in range(40)]
    [stop] = decide(t, one(last_active=T - 100), T, History(gaps=gaps))
    assert stop.kind == "stop" and stop.standby and stop.reason.endswith("to standby")
    plain = tier(policy="adaptive")
    [full] = decide(plain, one(last_active=T - 100), T, History(gaps=gaps))
    assert full.kind == "stop" and not full.standby


def test_standby_instance_is_fully_stopped_at_its_break_even() -> None:
    t = tier(policy="adaptive", standby_price_per_hour=0.28, standby_boot_seconds=20)
    limit = d.standby_break_even(t, 90)
    assert 0 < limit < math.inf
    before = TierFacts((InstanceFacts("i-1", S.STOPPED, standby_since=T - limit + 1),))
    after = TierFacts((InstanceFacts("i-1", S.STOPPED, standby_since=T - limit),))
    assert decide(t, before, T, History()) == []
    [stop] = decide(t, after, T, History())
    assert stop.kind == "stop" and not stop.standby and "full stop" in stop.reason


def test_decide_is_pure_same_inputs_same_actions() -> None:
    history = History(gaps=[(T - 50 * k, 40.0 + k) for k in range(60)], askers=[Asker(T - 30, True)])
    t = tier(policy="adaptive")
    first = decide(t, one(last_active=T - 30), T, history)
    assert first == decide(t, one(last_active=T - 30), T, history)
    later = decide(t, one(last_active=T - 30 + 86400 * 365), T + 86400 * 365, history)  # no wall clock inside
    assert [a.kind for a in later] == ["keep"]


def test_the_same_tier_asked_every_moment_across_a_window_edge() -> None:
    """The supervisor's once-a-second calls: nothing before the boot lead, a start at it, a stop after the window."""
    t = tier(prewarm='[{cron = "0 9 * * 1-5", for = "9h"}]', boot_seconds=90)
    nine = datetime(2025, 1, 6, 9, tzinfo=UTC).timestamp()
    assert decide(t, one(S.STOPPED), nine - 120, History()) == []
    assert decide(t, one(S.STOPPED), nine - 91, History()) == []
    assert kinds(decide(t, one(S.STOPPED), nine - 90, History())) == [("start", "")]
    six = nine + 9 * 3600
    assert kinds(decide(t, one(last_active=nine), six - 1, History())) == [("keep", "i-1")]
    assert kinds(decide(t, one(last_active=nine), six, History())) == [("stop", "i-1")]


def test_visit_rate_is_the_same_hour_of_past_weeks_and_a_young_history_is_not_silence() -> None:
    week = 7 * 86400
    three_a_week_ago = [T - week - 1000, T - week - 900, T - week - 800]  # three visits in last week's Mon 14h
    assert d.visit_rate(three_a_week_ago, T) * 3600 == pytest.approx(3.0)  # one week of history: 3/h, not 3/4 per h
    older = [T - 4 * week - 1000, *three_a_week_ago]  # history reaches back four weeks: the mean of four
    assert d.visit_rate(older, T) * 3600 == pytest.approx(4 / 4)
    assert d.visit_rate([], T) == 0.0
