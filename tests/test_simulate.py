"""`tiergate simulate` on traces small enough to work out by hand."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from router import simulate as sim
from router.cli import main as cli_main
from router.config import Config, parse_config

CONTRACT_KEYS = {"gpu_seconds", "cost", "starts", "requests", "waited_requests",
                 "wait_mean_s", "wait_p50_s", "wait_p95_s", "wait_max_s"}

# price 3.6/h = 0.001 per second, so cost = GPU seconds / 1000
ONE_TIER = """
[tiers.t]
gpu = "RTX 4090D"
price_per_hour = 3.6
idle_timeout = "5m"
boot_seconds = 60
tokens_per_second = 10
{extra}

[[tiers.t.instances]]
provider = "ecs"
instance_id = "i-1"
url = "http://{{private_ip}}:8000"
"""

TWO_TIERS = ONE_TIER + """
[tiers.big]
gpu = "A100"
price_per_hour = 7.2
boot_seconds = 100

[[tiers.big.instances]]
provider = "ecs"
instance_id = "i-2"
url = "http://{{private_ip}}:8000"

[routing.tasks.caption]
speed = "t"
balanced = "t"
quality = "big"

[routing.tasks.video]
speed = "big"
balanced = "big"
quality = "big"
"""


def config(extra: str = "", text: str = ONE_TIER) -> Config:
    return parse_config(text.format(extra=extra), "tiers.toml")


def replay(csv_text: str, cfg: Config) -> dict:
    rows = sim.parse_trace(csv_text, "trace.csv")
    return sim.simulate(sim.make_replay(sim.route(rows, cfg, "trace.csv")), cfg).report


def run_cli(tmp_path: Path, cfg_text: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The command as a user types it: the lead's CLI wiring plus our arguments."""
    cfg_path = tmp_path / "tiers.toml"
    cfg_path.write_text(cfg_text, encoding="utf-8")
    code = cli_main(["simulate", "--config", str(cfg_path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- the tier's state machine, by hand ---------------------------------------------------


def test_two_requests_a_minute_apart_share_one_start() -> None:
    # boot 0-60, serve 60-70 (waited 60); idle 70-130; serve 130-140; idle stop at 140 + 300
    r = replay("timestamp,duration_s\n0,10\n130,10\n", config())["tiers"]["t"]
    assert r["starts"] == 1
    assert r["gpu_seconds"] == pytest.approx(440)
    assert r["cost"] == pytest.approx(0.44)
    assert (r["waited_requests"], r["wait_max_s"], r["wait_mean_s"]) == (1, 60, 30)


def test_requests_ten_minutes_apart_pay_two_boots() -> None:
    # 0-370 (boot 60 + service 10 + idle 300), then again from 670: 670-1040
    r = replay("timestamp,duration_s\n0,10\n670,10\n", config())["tiers"]["t"]
    assert r["starts"] == 2
    assert r["gpu_seconds"] == pytest.approx(740)
    assert r["waited_requests"] == 2
    assert r["wait_p50_s"] == 60


def test_a_request_during_the_boot_waits_only_for_the_rest_of_it() -> None:
    r = replay("timestamp,duration_s\n0,10\n45,10\n45,10\n", config())["tiers"]["t"]
    assert r["starts"] == 1
    assert r["wait_max_s"] == 60 and r["wait_p50_s"] == 15
    assert r["gpu_seconds"] == pytest.approx(60 + 10 + 300)  # all three served 60-70 at once


def test_a_long_request_in_flight_keeps_the_tier_up() -> None:
    # serving 60-1060; the second arrives at 500 mid-request (no gap), ends 510; stop at 1060 + 300
    r = replay("timestamp,duration_s\n0,1000\n500,10\n", config())["tiers"]["t"]
    assert r["starts"] == 1
    assert r["gpu_seconds"] == pytest.approx(1360)


def test_idle_override_and_policy_flag_apply_to_every_tier() -> None:
    cfg = sim._overridden(config(), "fixed", "15m")
    r = replay("timestamp,duration_s\n0,10\n670,10\n", cfg)["tiers"]["t"]
    assert r["starts"] == 1  # 10 minutes apart is inside a 15 minute idle timeout
    assert r["gpu_seconds"] == pytest.approx(680 + 900)


def test_service_time_from_tokens_at_the_tiers_speed() -> None:
    # 100 output tokens at 10 tok/s + 400 prompt tokens read 20x faster = 12 s
    r = replay("timestamp,prompt_tokens,output_tokens\n0,400,100\n", config())["tiers"]["t"]
    assert r["gpu_seconds"] == pytest.approx(60 + 12 + 300)


def test_prewarm_window_serves_without_waiting_and_is_billed() -> None:
    # window at 00:10 for 10 min, started 60 s ahead (00:09); nobody comes until 00:15
    cfg = config('prewarm = [{cron = "10 0 * * *", for = "10m"}]')
    trace = "timestamp,duration_s\n2025-01-06T00:00:00Z,10\n2025-01-06T00:15:00Z,10\n"
    r = replay(trace, cfg)["tiers"]["t"]
    assert r["starts"] == 2  # the first request's own start (00:00-00:06:10), then the window's
    assert r["waited_requests"] == 1  # only the one before the window
    # 370 s for the first; then from 00:09 until the later of window end (00:20) and 00:15:10 + 5 min
    assert r["gpu_seconds"] == pytest.approx(370 + (20 * 60 + 10 - 9 * 60))


def test_adaptive_policy_in_the_replay_is_the_gateways_rule() -> None:
    # 12 requests every 3 minutes, then one 2 hours later: adaptive learns to keep ~3 minutes
    times = [i * 180 for i in range(12)] + [11 * 180 + 7200]
    trace = "timestamp,duration_s\n" + "".join(f"{t},1\n" for t in times)
    fixed = replay(trace, config('policy = "fixed"'))["tiers"]["t"]
    adaptive = replay(trace, config('policy = "adaptive"'))["tiers"]["t"]
    assert fixed["starts"] == adaptive["starts"] == 2
    assert adaptive["gpu_seconds"] < fixed["gpu_seconds"]  # stops sooner after the session


# --- routing and baselines ---------------------------------------------------------------


def test_task_and_mode_are_routed_like_the_gateway() -> None:
    trace = "timestamp,task,mode,duration_s\n0,caption,speed,1\n0,caption,quality,1\n0,video,,1\n1,,,1\n"
    report = replay(trace, config(text=TWO_TIERS))
    assert report["tiers"]["t"]["requests"] == 2  # caption speed, and the defaults (caption, balanced)
    assert report["tiers"]["big"]["requests"] == 2
    assert report["total"]["requests"] == 4


def test_baselines_on_a_hand_trace() -> None:
    report = replay("timestamp,duration_s\n0,10\n670,10\n", config())
    base = report["baselines"]
    span = 680  # first arrival to last answer
    assert base["always_on_single"]["gpu_seconds"] == pytest.approx(span)
    assert base["always_on_single"]["waited_requests"] == 0
    assert base["always_on_per_tier"]["cost"] == pytest.approx(span / 1000)
    assert base["fixed_5m"]["gpu_seconds"] == pytest.approx(740)
    # knowing the 600 s gap: stop at once (600 s kept > boot 60 s + the wait's worth), restart
    assert base["offline_optimum"]["gpu_seconds"] == pytest.approx(70 + 70)
    assert base["offline_optimum"]["starts"] == 2


def test_always_on_single_is_priced_as_the_standard_tier() -> None:
    cfg = parse_config(TWO_TIERS.format(extra="").replace("tiers.t]", "tiers.standard]")
                       .replace("tiers.t.", "tiers.standard.").replace('"t"', '"standard"'))
    report = replay("timestamp,task,duration_s\n0,video,10\n1000,video,10\n", cfg)
    # everything ran on the A100 tier (7.2/h), but one always-on machine is priced as `standard`,
    # up from the first request to the last answer (an always-on machine answers at once: 0-1010)
    assert report["baselines"]["always_on_single"]["cost"] == pytest.approx(1010 * 3.6 / 3600)


# --- trace formats and errors ------------------------------------------------------------

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,400,100
2023-11-16 18:15:50.9951690,2000,50
"""


def test_azure_trace_is_read_as_published() -> None:
    rows = sim.parse_trace(AZURE, "AzureLLMInferenceTrace_conv.csv")
    assert [(r.prompt_tokens, r.output_tokens) for r in rows] == [(400, 100), (2000, 50)]
    assert rows[1].t - rows[0].t == pytest.approx(4.314579, abs=1e-6)
    report = sim.simulate(sim.make_replay(sim.route(rows, config())), config()).report
    assert report["total"]["requests"] == 2
    assert report["tiers"]["t"]["starts"] == 1


def test_iso_and_epoch_timestamps_mean_the_same() -> None:
    iso = sim.parse_trace("timestamp\n2025-01-06T09:00:00Z\n2025-01-06T09:00:00+08:00\n2025-01-06 09:00:00\n")
    assert sorted(r.t for r in iso) == [1736125200.0, 1736154000.0, 1736154000.0]
    assert sim.parse_trace("timestamp\n1736154000\n")[0].t == 1736154000.0


@pytest.mark.parametrize(("text", "where", "says"), [
    ("timestamp,duration_s\n0,1\nyesterday,1\n", "trace.csv:3:", "timestamp 'yesterday'"),
    ("timestamp,duration_s\n0,1\n5,-2\n", "trace.csv:3:", "duration_s '-2' must be"),
    ("timestamp,output_tokens\n0,1.5\n", "trace.csv:2:", "not a whole number"),
    ("when,task\n0,ocr\n", "trace.csv:1:", "no `timestamp` column"),
    ("timestamp,gpu\n0,x\n", "trace.csv:1:", "unknown column(s) gpu"),
    ("timestamp\n", "trace.csv:1:", "no requests"),
])
def test_broken_traces_name_the_file_and_line(text: str, where: str, says: str) -> None:
    with pytest.raises(sim.TraceError) as err:
        sim.route(sim.parse_trace(text, "trace.csv"), config(), "trace.csv")
    assert err.value.problems[0].startswith(where)
    assert says in err.value.problems[0]


def test_unknown_tier_task_and_mode_are_reported_with_their_lines() -> None:
    rows = sim.parse_trace("timestamp,tier,task,mode\n0,gpu9,,\n1,,captions,\n2,,ocr,fast\n3,t,,\n", "trace.csv")
    with pytest.raises(sim.TraceError) as err:
        sim.route(rows, config(), "trace.csv")
    assert [p.split(": ", 1)[0] for p in err.value.problems] == ["trace.csv:2", "trace.csv:3", "trace.csv:4"]
    assert "gpu9" in err.value.problems[0] and "captions" in err.value.problems[1] and "fast" in err.value.problems[2]


def test_broken_trace_exits_2_with_file_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("timestamp,duration_s\n0,1\n1,abc\n", encoding="utf-8")
    code, _out, err = run_cli(tmp_path, ONE_TIER.format(extra=""), ["--trace", str(trace)], capsys)
    assert code == 2
    assert f"{trace}:3: duration_s 'abc' is not a number" in err


def test_missing_trace_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(tmp_path, ONE_TIER.format(extra=""), ["--trace", str(tmp_path / "none.csv")], capsys)
    assert code == 2 and "none.csv:1: cannot read the trace" in err


# --- synthetic traces --------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(sim.SYNTHETIC))
def test_synthetic_traces_are_deterministic_for_a_seed(kind: str) -> None:
    assert sim.synthetic(kind, 7, seed=3) == sim.synthetic(kind, 7, seed=3)
    assert sim.synthetic(kind, 7, seed=3) != sim.synthetic(kind, 7, seed=4)


def test_office_hours_traffic_is_weekday_daytime() -> None:
    from datetime import UTC, datetime

    rows = sim.synthetic("office-hours", 14, seed=1)
    when = [datetime.fromtimestamp(r.t, UTC) for r in rows]
    assert all(w.weekday() < 5 for w in when if w.hour < 23)  # sessions may run past midnight, not start
    daytime = sum(9 <= w.hour < 18 for w in when)
    assert daytime / len(when) > 0.9


# --- the command and its report ----------------------------------------------------------


def test_json_report_has_the_contract_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli(tmp_path, TWO_TIERS.format(extra=""),
                              ["--synthetic", "office-hours", "--days", "3", "--seed", "2", "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"tiers", "total", "baselines"}
    assert set(report["tiers"]) <= {"t", "big"}
    for metrics in [*report["tiers"].values(), report["total"], *report["baselines"].values()]:
        assert set(metrics) == CONTRACT_KEYS
    assert {"always_on_single", "always_on_per_tier", "fixed_5m", "offline_optimum"} <= set(report["baselines"])
    assert report["total"]["requests"] == sum(t["requests"] for t in report["tiers"].values())
    assert report["total"]["cost"] < report["baselines"]["always_on_single"]["cost"]


def test_table_and_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,duration_s\n0,10\n670,10\n", encoding="utf-8")
    out_dir = tmp_path / "report"
    code, out, _err = run_cli(tmp_path, ONE_TIER.format(extra=""), ["--trace", str(trace), "--out", str(out_dir)], capsys)
    assert code == 0
    assert "tier t" in out and "baseline offline_optimum" in out and "cost vs offline optimum" in out
    assert json.loads((out_dir / "report.json").read_text())["tiers"]["t"]["starts"] == 2
    assert (out_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trace_or_synthetic_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    sim.add_arguments(parser)
    assert sim.run(parser.parse_args([]), config()) == 2
    assert "--trace FILE or --synthetic MODEL" in capsys.readouterr().err


def test_saved_synthetic_trace_replays_to_the_same_report(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    sim.add_arguments(parser)
    saved = tmp_path / "webui.csv"
    cfg = config()
    sim.run(parser.parse_args(["--synthetic", "webui", "--days", "2", "--json", "--save-trace", str(saved)]), cfg)
    rows = sim.read_trace(saved)
    assert rows and all(r.task for r in rows)
    assert len(rows) == len(sim.synthetic("webui", 2, seed=1))


def test_live_history_replays_the_recorded_boots(redis_url: str) -> None:
    """Boots recorded by a gateway (newest first) replace boot_seconds, oldest first."""
    import redis

    text = ONE_TIER.replace("[tiers.t]", "[tiers.simboots]").replace("[[tiers.t.", "[[tiers.simboots.")
    cfg = parse_config(f'[gateway]\nredis_url = "{redis_url}"\n' + text.format(extra=""))
    r = redis.Redis.from_url(redis_url)
    r.delete("tg:boots:simboots")
    r.rpush("tg:boots:simboots", "45.0", "20.0")  # newest first: 20 s happened first
    r.close()
    rows = sim.parse_trace("timestamp,duration_s\n0,10\n1000,10\n")
    boots = sim.live_boots(cfg)
    assert boots["simboots"] == [45.0, 20.0]
    replay_ = dataclasses.replace(sim.make_replay(sim.route(rows, cfg)), boots=boots)
    report = sim.simulate(replay_, cfg).report["tiers"]["simboots"]
    assert (report["wait_p50_s"], report["wait_max_s"]) == (32.5, 45.0)  # waits 20 then 45


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("trace", sorted((ROOT / "bench" / "traces").glob("*.csv")), ids=lambda p: p.name)
def test_bundled_sample_traces_replay(trace: Path) -> None:
    cfg = parse_config((ROOT / "bench" / "traces" / "tiered.toml").read_text(), "tiered.toml")
    report = sim.simulate(sim.make_replay(sim.route(sim.read_trace(trace), cfg)), cfg).report
    assert report["total"]["requests"] > 0
    assert report["total"]["cost"] < report["baselines"]["always_on_single"]["cost"]


# --- sessions, open pages and intents (issue #12) -----------------------------------------

ADAPTIVE = 'policy = "adaptive"'


def test_session_columns_round_trip_and_the_latest_close_holds_for_the_session(tmp_path: Path) -> None:
    rows = sim.parse_trace("timestamp,session,closed,intent_s\n0,a,,\n50,a,1970-01-01T00:01:30Z,12.5\n60,a,100,\n70,b,,\n")
    assert [r.closed for r in rows] == [100.0, 100.0, 100.0, None]  # given at 90 and at 100: the later holds
    assert rows[1].intent_s == 12.5 and rows[3].session == "b"
    path = tmp_path / "t.csv"
    assert sim.write_trace(rows, path) == 4
    assert sim.read_trace(path) == [dataclasses.replace(r, line=i + 2) for i, r in enumerate(rows)]


def test_a_bad_close_time_names_the_line() -> None:
    with pytest.raises(sim.TraceError) as err:
        sim.parse_trace("timestamp,session,closed\n0,a,soon\n", "trace.csv")
    assert err.value.problems == ["trace.csv:2: closed: timestamp 'soon' is neither epoch seconds nor ISO 8601 (e.g. 2025-01-06T09:30:00Z)"]


def test_a_closed_page_stops_the_adaptive_tier_at_once() -> None:
    # boot 0-60, serve 60-70; the only asker closes the page at 100: nobody can ask any more, stop at 100
    trace = "timestamp,duration_s,session,closed\n0,10,a,100\n"
    adaptive = replay(trace, config(ADAPTIVE))["tiers"]["t"]
    assert adaptive["gpu_seconds"] == pytest.approx(100)
    fixed = replay(trace, config())["tiers"]["t"]
    assert fixed["gpu_seconds"] == pytest.approx(370)  # a timeout ignores the page: 70 + 300


def test_an_open_page_keeps_the_tier_through_the_keep_alive() -> None:
    trace = "timestamp,duration_s,session\n0,10,a\n"  # page state unknown: the 5 min fallback
    assert replay(trace, config(ADAPTIVE))["tiers"]["t"]["gpu_seconds"] == pytest.approx(370)


def test_warm_on_intent_boots_while_the_user_types() -> None:
    # a file attached 30 s before the question: boot 70-130 instead of 100-160, the user waits 30 s, not 60
    trace = "timestamp,duration_s,session,intent_s\n100,10,a,30\n"
    warm = replay(trace, config("warm_on_intent = true"))["tiers"]["t"]
    assert (warm["wait_max_s"], warm["starts"]) == (30, 1)
    assert warm["gpu_seconds"] == pytest.approx(60 + 10 + 300)  # billed from the intent at 70 to 140 + 300
    cold = replay(trace, config())["tiers"]["t"]
    assert cold["wait_max_s"] == 60


def test_the_simulator_decides_with_the_gateways_decide() -> None:
    import inspect

    from router import decide
    from router.simulate import machine

    assert inspect.signature(machine.play).parameters["decider"].default is decide.decide
    assert inspect.signature(machine.TierSim).parameters["decider"].default is decide.decide
    seen: list[float] = []

    def spy(tier, facts, now, history):
        seen.append(now)
        return decide.decide(tier, facts, now, history)

    reqs = [sim.Request(0, "t", 10), sim.Request(670, "t", 10)]
    rep = sim.make_replay(reqs)
    tier = config().tiers["t"]
    assert sim.play_tier(tier, reqs, rep, spy).gpu_seconds == sim.play_tier(tier, reqs, rep).gpu_seconds == pytest.approx(740)
    assert 370 in [round(t) for t in seen]  # the idle stop was decide's call at 70 + 300


def test_synthetic_sessions_have_ids_closes_and_intents() -> None:
    rows = sim.synthetic("office-hours", 5, seed=2)
    sessions: dict[str, list] = {}
    for r in rows:
        sessions.setdefault(r.session, []).append(r)
    assert all(r.session for r in rows) and len(sessions) > 20
    for reqs in sessions.values():
        assert len({r.closed for r in reqs}) == 1 and reqs[0].closed > reqs[-1].t  # closes once, after its last request
    with_files = [r for r in rows if r.task != "html"]
    assert all(r.intent_s is not None for r in with_files)
    assert all(r.intent_s is None for r in rows if r.task == "html")
    quick = [r.closed - max(q.t for q in sessions[r.session]) < 900 for r in rows]
    assert 0.3 < sum(quick) / len(quick) < 0.7  # about half close the page after their last answer


def test_close_share_changes_only_the_closes() -> None:
    a, b = sim.synthetic("webui", 3, 1, close_share=0.0), sim.synthetic("webui", 3, 1, close_share=1.0)
    assert [r.t for r in a] == [r.t for r in b]
    assert all(x.closed >= y.closed for x, y in zip(a, b, strict=True))


def test_trace_named_like_a_synthetic_model_points_to_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(tmp_path, ONE_TIER.format(extra=""), ["--trace", "office-hours"], capsys)
    assert code == 2
    assert "office-hours:1: cannot read the trace: no such file; for generated traffic use --synthetic office-hours" in err


# --- tiergate export-trace: the gateway's own week, from Redis ------------------------------


def test_export_trace_writes_what_simulate_reads(redis_url: str, tmp_path: Path) -> None:
    import asyncio

    import redis.asyncio as aioredis

    async def scenario() -> int:
        r = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            await r.delete("tg:trace")
            base = {"task": "caption", "mode": "balanced", "prompt_tokens": "1200", "output_tokens": "250"}
            await r.xadd("tg:trace", {"t": "1000", "tier": "t", "session": "old", "duration_s": "3", "cache": "miss", **base},
                          id="1000000-0")
            await r.xadd("tg:trace", {"event": "intent", "t": "1990", "tier": "t", "session": "s1"}, id="1990000-0")
            await r.xadd("tg:trace", {"t": "2000", "tier": "t", "session": "s1", "duration_s": "4.5", "cache": "miss", **base},
                          id="2000000-0")
            await r.xadd("tg:trace", {"t": "2010", "tier": "t", "session": "s1", "duration_s": "0", "cache": "hit", **base},
                          id="2010000-0")
            await r.xadd("tg:trace", {"t": "2050", "tier": "t", "session": "", "duration_s": "2", "cache": "bypass", **base},
                          id="2050000-0")
            await r.xadd("tg:trace", {"event": "close", "t": "2100", "session": "s1"}, id="2100000-0")
            return await sim.export_trace(r, tmp_path / "week.csv", since=1500)
        finally:
            await r.aclose()

    assert asyncio.run(scenario()) == 2  # the old one is before --since, the cache hit never reached a GPU
    rows = sim.read_trace(tmp_path / "week.csv")
    assert [(r.t, r.session, r.duration_s, r.closed, r.intent_s) for r in rows] == [
        (2000.0, "s1", 4.5, 2100.0, 10.0), (2050.0, "", 2.0, None, None)]
    report = sim.simulate(sim.make_replay(sim.route(rows, config())), config()).report
    assert report["total"]["requests"] == 2


def test_weekly_saving_replays_the_last_seven_days() -> None:
    from router.simulate.savings import rows_from_stream, weekly_saving

    end = 1_736_000_000.0
    entries = [{"t": str(end - 86400 * d - 3600), "tier": "t", "task": "caption", "session": f"s{d}",
                "duration_s": "20", "cache": "miss"} for d in range(10)]
    entries.append({"event": "close", "t": str(end - 3600 + 60), "session": "s0"})
    tier = config(ADAPTIVE).tiers["t"]
    week = weekly_saving(rows_from_stream(entries), tier, end)
    assert week.requests == 7  # three of the ten days are older than a week
    assert week.always_on_cost == pytest.approx(7 * 24 * 3.6)
    assert 0 < week.policy_cost < week.fixed_5m_cost < week.always_on_cost
    assert week.saving == pytest.approx(week.always_on_cost - week.policy_cost)
    assert week.starts == 7
    empty = weekly_saving([], tier, end)
    assert empty.policy_cost == 0 and empty.saving_pct == 100.0


def test_standby_is_billed_at_its_price_and_restarts_quickly() -> None:
    """Stop to standby after each answer: a quick restart while in standby, a full boot after its break-even."""
    from router import decide
    from router.decide import Action
    from router.machine import InstanceState

    tier = config("standby_price_per_hour = 0.36\nstandby_boot_seconds = 10").tiers["t"]
    limit = decide.standby_break_even(tier, 60)  # 0.36/h standby vs a 60 s boot: about 40 min
    assert 1800 < limit < 3600

    def to_standby(t, facts, now, history):
        inst = facts.instances[0]
        if inst.state == InstanceState.READY and not inst.inflight:
            return [Action("stop", inst.id, "test", standby=True)]
        return decide.decide(t, facts, now, history)

    later = 1020 + limit + 500
    reqs = [sim.Request(0, "t", 10), sim.Request(1000, "t", 10), sim.Request(later, "t", 10)]
    run = sim.play_tier(tier, reqs, sim.make_replay(reqs), to_standby)
    assert run.waits == [60, 10, 60]  # the boot, the standby restart, the boot again (standby ended at its break-even)
    assert run.gpu_seconds == pytest.approx(70 + 20 + 70)
    assert run.standby_seconds == pytest.approx((1000 - 70) + limit)
    assert run.cost(tier) == pytest.approx((160 * 3.6 + run.standby_seconds * 0.36) / 3600)


def test_export_command_reads_the_configured_redis(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What `tiergate export-trace --out F --since 7d` runs, once the lead wires the subcommand."""
    import time

    import redis

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.delete("tg:trace")
    now = time.time()
    r.xadd("tg:trace", {"t": f"{now - 9 * 86400:.3f}", "tier": "t", "cache": "miss"}, id=f"{int((now - 9 * 86400) * 1000)}-0")
    r.xadd("tg:trace", {"t": f"{now - 3600:.3f}", "tier": "t", "task": "ocr", "cache": "miss"}, id=f"{int((now - 3600) * 1000)}-0")
    r.close()
    parser = argparse.ArgumentParser()
    sim.add_export_arguments(parser)
    cfg = parse_config(f'[gateway]\nredis_url = "{redis_url}"\n' + ONE_TIER.format(extra=""))
    out = tmp_path / "week.csv"
    assert sim.run_export(parser.parse_args(["--out", str(out), "--since", "7d"]), cfg) == 0
    assert "wrote 1 requests" in capsys.readouterr().err
    assert [r.task for r in sim.read_trace(out)] == ["ocr"]
    assert sim.run_export(parser.parse_args(["--out", str(out), "--since", "last week"]), cfg) == 2
    assert "--since: 'last week' is neither a time" in capsys.readouterr().err


def test_close_share_outside_zero_to_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    sim.add_arguments(parser)
    assert sim.run(parser.parse_args(["--synthetic", "webui", "--close-share", "50"]), config()) == 2
    assert "--close-share must be between 0 and 1 (a share of visitors), not 50" in capsys.readouterr().err
