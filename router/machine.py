"""The instance state machine: the states, the transitions allowed between them, a tier's state.

Every state change of an instance goes through `State.transition` (a compare-and-swap in
Redis) which refuses any pair this table does not list, so a stale read can never move an
instance somewhere it cannot go. The table is printed into router/DESIGN.md
(`python -m router.machine`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class InstanceState(enum.StrEnum):
    STOPPED = "stopped"  # nothing runs, nothing is billed
    STARTING = "starting"  # the provider was asked to start; the worker is not answering yet
    READY = "ready"  # the worker answers; requests may lease it
    STOPPING = "stopping"  # the provider was asked to stop; billing runs until it has
    FAILED = "failed"  # nothing runs; the last start did not lead to a ready worker (the reason is kept)


S = InstanceState

# from -> {to: when}
TRANSITIONS: dict[InstanceState, dict[InstanceState, str]] = {
    S.STOPPED: {
        S.STARTING: "a request, an admin, a pre-warm window or a scale-out asks for it; or a running machine is adopted",
        S.FAILED: "a start is refused before anything runs (budget, no capacity, misconfigured)",
    },
    S.FAILED: {
        S.STARTING: "the next start attempt (it clears the reason)",
        S.STOPPED: "an admin stop clears the failure",
    },
    S.STARTING: {
        S.READY: "the worker shows its identity on the health check, or calls back",
        S.STOPPING: "boot_timeout passed, the boot was cancelled, or the worker died while booting",
        S.FAILED: "the provider refused the start and nothing runs",
        S.STOPPED: "the machine is gone (found by reconcile)",
    },
    S.READY: {
        S.STOPPING: "idle past its keep-alive, max_runtime, an admin stop, a removed tier, or a reclaimed machine",
        S.STOPPED: "the machine is gone (crash, spot reclaim, stopped by hand; found by reconcile)",
    },
    S.STOPPING: {
        S.STOPPED: "the provider reports it stopped (billing closes)",
        S.FAILED: "a failed boot's machine has stopped (billing closes)",
    },
}


def allowed(current: InstanceState | str, new: InstanceState | str) -> bool:
    return InstanceState(new) in TRANSITIONS.get(InstanceState(current), {})


def tier_state(states: Iterable[InstanceState | str]) -> InstanceState:
    """A tier is what its most useful instance is: any ready makes it ready, and so on."""
    present = {InstanceState(s) for s in states}
    for s in (S.READY, S.STARTING, S.STOPPING, S.FAILED):
        if s in present:
            return s
    return S.STOPPED


def table_markdown() -> str:
    """The transition table as Markdown, for router/DESIGN.md."""
    rows = ["| from | to | when |", "|---|---|---|"]
    for src, targets in TRANSITIONS.items():
        rows += [f"| `{src}` | `{dst}` | {why} |" for dst, why in targets.items()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(table_markdown())
