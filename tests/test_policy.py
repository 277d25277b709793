"""The idle policy and pre-warm windows: what decides how long a GPU bills while nobody uses it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from router import policy, prewarm
from router.config import TierConfig, parse_config

MONDAY = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday


def tier(**kw: object) -> TierConfig:
    """One tier as an admin would write it in tiers.toml."""
    settings = {"gpu": "RTX 4090D", "price_per_hour": 2.8, "boot_seconds": 90, **kw}
    text = "[tiers.t]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in settings.items()) + """

[[tiers.t.instances]]
provider = "ecs"
instance_id = "i-1"
url = "http://{private_ip}:8000"
"""
    return parse_config(text, "tiers.toml").tiers["t"]


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return v if v.startswith("[") else json.dumps(v)
    return str(v)


# --- keep_alive -------------------------------------------------------------------------


def test_fixed_policy_is_the_idle_timeout_whatever_the_gaps() -> None:
    t = tier(idle_timeout="7m")
    assert policy.keep_alive(t, [5.0] * 100) == 420
    assert policy.keep_alive(t, []) == 420


def test_adaptive_with_little_history_falls_back_to_idle_timeout() -> None:
    t = tier(policy="adaptive", idle_timeout="5m")
    assert policy.keep_alive(t, [7200.0] * (policy.MIN_GAPS - 1)) == 300


def test_adaptive_stops_at_once_when_gaps_are_long_and_rare() -> None:
    t = tier(policy="adaptive", idle_timeout="5m", wait_cost_per_minute=0.1)
    assert policy.keep_alive(t, [3 * 3600.0, 5 * 3600.0, 2 * 3600.0] * 10) == 0


def test_adaptive_keeps_on_through_frequent_short_gaps() -> None:
    t = tier(policy="adaptive", idle_timeout="5m", wait_cost_per_minute=0.1)
    k = policy.keep_alive(t, [60.0, 45.0, 80.0, 30.0] * 10)
    assert 80 <= k <= 80 * policy.MARGIN  # through the longest short gap, with its margin


def test_adaptive_keeps_through_sessions_and_stops_after_them() -> None:
    """Users' think times of ~1 min, sessions hours apart: keep ~1 min, not 5, not 4 h."""
    t = tier(policy="adaptive", idle_timeout="5m", wait_cost_per_minute=0.1)
    gaps = ([40.0, 55.0, 70.0, 35.0] * 5 + [4000.0]) * 4
    assert 70 <= policy.keep_alive(t, gaps) <= 70 * policy.MARGIN


@pytest.mark.parametrize("wait_cost", [0.0, 0.1, 1.0])
def test_break_even_matches_the_closed_form_for_a_single_gap_length(wait_cost: float) -> None:
    """All gaps equal g: keep on iff price*g < price*boot + wait_cost*boot/60 (ski rental)."""
    t = tier(policy="adaptive", idle_timeout="5m", wait_cost_per_minute=wait_cost, boot_seconds=90)
    w = policy.effective_wait_cost(t)
    g_star = (2.8 * 90 / 3600 + w * 90 / 60) * 3600 / 2.8
    assert policy.break_even_gap(2.8, 90, w) == pytest.approx(g_star)
    below, above = 0.95 * g_star, 1.05 * g_star
    assert policy.keep_alive(t, [below] * 20) == pytest.approx(below * policy.MARGIN)
    assert policy.keep_alive(t, [above] * 20) == 0
    assert policy.offline_optimal_keep(below, 2.8, 90, w)
    assert not policy.offline_optimal_keep(above, 2.8, 90, w)


def test_unset_wait_cost_makes_idle_timeout_the_break_even() -> None:
    """wait_cost_per_minute = 0 means "value waiting as my idle_timeout does", not "waiting is free"."""
    t = tier(policy="adaptive", idle_timeout="5m", boot_seconds=90)
    assert policy.break_even_gap(2.8, 90, policy.effective_wait_cost(t)) == pytest.approx(300)
    assert 240 <= policy.keep_alive(t, [240.0] * 20) <= 240 * policy.MARGIN  # a 4 min gap is kept on
    assert policy.keep_alive(t, [360.0] * 20) == 0  # a 6 min one is not


def test_keep_alive_is_capped_at_four_hours() -> None:
    t = tier(policy="adaptive", wait_cost_per_minute=1000.0)
    assert policy.keep_alive(t, [3.9 * 3600] * 20) == policy.MAX_KEEP_ALIVE
    assert policy.keep_alive(t, [5 * 3600.0] * 20) == 0  # longer than the cap: gone for the day


# --- pre-warm windows --------------------------------------------------------------------


def office() -> TierConfig:
    return tier(prewarm='[{cron = "0 9 * * 1-5", for = "9h"}]', boot_seconds=90)


def test_inside_and_outside_a_weekday_window() -> None:
    t = office()
    assert prewarm.in_window(t, MONDAY.replace(hour=10))
    assert prewarm.in_window(t, MONDAY.replace(hour=17, minute=59))
    assert not prewarm.in_window(t, MONDAY.replace(hour=18))  # the end is exclusive
    assert not prewarm.in_window(t, MONDAY.replace(hour=22))
    assert not prewarm.in_window(t, MONDAY.replace(hour=10) + timedelta(days=5))  # Saturday


def test_window_begins_one_boot_ahead_so_the_tier_is_ready_at_the_start() -> None:
    t = office()
    nine = MONDAY.replace(hour=9)
    assert prewarm.in_window(t, nine - timedelta(seconds=90))
    assert not prewarm.in_window(t, nine - timedelta(seconds=91))


def test_naive_times_are_utc() -> None:
    assert prewarm.in_window(office(), datetime(2025, 1, 6, 10, 0))


def test_next_window_from_the_weekend_is_monday_morning() -> None:
    saturday = MONDAY + timedelta(days=5, hours=12)
    start, end = prewarm.next_window(office(), saturday)
    assert start == MONDAY + timedelta(days=7, hours=9) - timedelta(seconds=90)
    assert end == MONDAY + timedelta(days=7, hours=18)


def test_next_window_inside_a_window_is_that_window() -> None:
    start, end = prewarm.next_window(office(), MONDAY.replace(hour=12))
    assert (start, end) == (MONDAY.replace(hour=8, minute=58, second=30), MONDAY.replace(hour=18))


def test_no_windows_configured() -> None:
    assert prewarm.next_window(tier(), MONDAY) is None
    assert not prewarm.in_window(tier(), MONDAY)


def test_windows_agree_with_in_window() -> None:
    t = tier(prewarm='[{cron = "0 9 * * 1-5", for = "9h"}, {cron = "30 17 * * *", for = "2h"}]')
    start = MONDAY.timestamp()
    spans = prewarm.windows(t, start, start + 7 * 86400)
    for minute in range(0, 7 * 24 * 60, 7):
        when = start + minute * 60
        inside = any(s <= when < e for s, e in spans)
        assert inside == prewarm.in_window(t, datetime.fromtimestamp(when, UTC)), datetime.fromtimestamp(when, UTC)


def used_at(hour: float, weeks: list[int]) -> list[float]:
    """Arrivals at Monday `hour` in the given weeks before the fifth Monday."""
    fifth = MONDAY + timedelta(weeks=4)
    return sorted((fifth - timedelta(weeks=w) + timedelta(hours=hour)).timestamp() for w in weeks)


def test_predicted_window_for_an_hour_used_in_three_of_four_weeks() -> None:
    t = tier(prewarm_predict=True, boot_seconds=90)
    history = used_at(10.25, [1, 2, 4])
    fifth = MONDAY + timedelta(weeks=4)
    assert prewarm.in_window(t, fifth.replace(hour=10, minute=30), history)
    assert prewarm.in_window(t, fifth.replace(hour=9, minute=58, second=30), history)  # boot ahead
    assert not prewarm.in_window(t, fifth.replace(hour=9, minute=58), history)
    assert not prewarm.in_window(t, fifth.replace(hour=11, minute=30), history)
    assert (0, 10) in prewarm.regular_hours(history, fifth)


def test_no_prediction_from_two_weeks_or_without_the_setting() -> None:
    fifth = MONDAY + timedelta(weeks=4)
    assert not prewarm.in_window(tier(prewarm_predict=True), fifth.replace(hour=10, minute=30), used_at(10.25, [1, 3]))
    assert not prewarm.in_window(tier(), fifth.replace(hour=10, minute=30), used_at(10.25, [1, 2, 3, 4]))
