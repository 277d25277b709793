"""Deciding apart from acting: what a tier should do now, as a pure function of what is known.

`decide(tier, facts, now, history)` looks at one tier's instances, its waiting requests and
its history and returns actions; it does no I/O and reads no clock, so the gateway's
supervisor (which carries the actions out) and `tiergate simulate` (which replays a trace on
a virtual clock) run the very same decision, and tests drive it with a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from . import policy, prewarm
from .config import TierConfig
from .machine import InstanceState


@dataclass(frozen=True)
class InstanceFacts:
    id: str
    state: InstanceState
    inflight: int = 0  # live leases (requests being answered)
    last_active: float = 0.0  # epoch s: when its last request ended (or it became ready)
    boot_started: float = 0.0  # epoch s: when its current start began; 0 if stopped
    billed: bool = True  # False for always-on (static) instances: never started or stopped by tiergate
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


@dataclass(frozen=True)
class History:
    gaps: Sequence[tuple[float, float]] = ()  # (epoch s the idle gap ended, its length s), newest first
    boots: Sequence[float] = ()  # recent cold-start seconds, newest first
    arrivals: Sequence[float] = ()  # epoch s of arrivals at an idle tier, ascending
    askers: Sequence[Asker] = ()


@dataclass(frozen=True)
class Action:
    kind: Literal["start", "stop", "force_stop", "give_up_boot", "scale_out", "keep"]
    instance: str = ""
    reason: str = ""
    keep_alive: float = 0.0  # stop/keep: the keep-alive in force (s); the gateway re-checks idle >= it atomically
    until: float = 0.0  # keep: epoch s when this instance would stop if nothing changes (inf if never)
    standby: bool = False  # stop: the provider's cheaper-to-restart stop


def boot_eta(tier: TierConfig, boots: Sequence[float]) -> float:
    """Median of recent boots, or the configured estimate before there is any history."""
    recent = sorted(boots[:10])
    if not recent:
        return tier.boot_seconds
    mid = len(recent) // 2
    return recent[mid] if len(recent) % 2 else (recent[mid - 1] + recent[mid]) / 2


def decide(tier: TierConfig, facts: TierFacts, now: float, history: History) -> list[Action]:
    actions: list[Action] = []
    S = InstanceState
    states = [i.state for i in facts.instances]
    in_window = bool(tier.prewarm or tier.prewarm_predict) and prewarm.in_window(
        tier, datetime.fromtimestamp(now, UTC), history.arrivals)
    up = [i for i in facts.instances if i.state in (S.READY, S.STARTING)]
    if in_window and not up and S.STOPPING not in states and S.FAILED not in states:
        actions.append(Action("start", reason="scheduled pre-warm window"))
    for i in facts.instances:
        if i.state == S.STARTING and i.billed and i.boot_started:
            if now - i.boot_started >= tier.boot_timeout:
                actions.append(Action("give_up_boot", i.id,
                                      f"{i.id} did not become ready within boot_timeout {tier.boot_timeout:.0f}s"))
            elif i.for_requests and facts.queued == 0:
                actions.append(Action("give_up_boot", i.id, "nobody is waiting for it any more"))
    keep = policy.keep_alive(tier, [g for _, g in history.gaps], boot_eta(tier, history.boots))
    for i in facts.instances:
        if i.state != S.READY or not i.billed:
            continue
        if tier.max_runtime and i.boot_started and now - i.boot_started >= tier.max_runtime:
            actions.append(Action("force_stop", i.id, f"max_runtime {tier.max_runtime:.0f}s reached"))
            continue
        if in_window:
            actions.append(Action("keep", i.id, "inside a pre-warm window", keep, math.inf))
        elif i.inflight:
            actions.append(Action("keep", i.id, "serving", keep, math.inf))
        elif now - i.last_active >= keep:
            actions.append(Action("stop", i.id, f"idle for {keep:.0f}s", keep))
        else:
            actions.append(Action("keep", i.id, f"{tier.policy} keep-alive {keep:.0f}s", keep, i.last_active + keep))
    cap = tier.max_inflight_per_instance
    ready = [i for i in facts.instances if i.state == S.READY]
    spare = [i for i in facts.instances if i.state in (S.STOPPED, S.FAILED)]
    if cap and ready and spare and S.STARTING not in states and all(i.inflight >= cap for i in ready):
        actions.append(Action("scale_out", reason="every ready instance is at max_inflight_per_instance"))
    return actions
