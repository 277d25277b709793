"""`tiergate doctor`: can this gateway actually start and stop its ECS machines?

A wrong key, a missing permission or a typo in an instance id would otherwise show up
only when the first user waits for a GPU tier that never comes. Doctor asks ECS before
that: where the credential chain found credentials (never their values), whether each
instance is visible, and whether StartInstance / StopInstance are permitted (DryRun, so
nothing moves). It ends with the least-privilege RAM policy for exactly these instances.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from .config import Config, InstanceConfig
from .providers.base import MachineState, ProviderError
from .providers.ecs import EcsProvider

OK, FAIL = "ok", "FAIL"

# Loggers of the Alibaba SDK that narrate each step of the credential chain, with a traceback
# for every provider that found nothing ("credentials" also installs its own stderr handler).
_SDK_LOGGERS = ("credentials", "apscheduler", "alibabacloud_credentials", "alibabacloud_tea_openapi")


def quiet_sdk_logging() -> None:
    """Silence the SDK's chatter for the doctor's run: its report already has one line per problem."""
    for name in _SDK_LOGGERS:
        logger = logging.getLogger(name)
        logger.disabled = True  # the SDK resets the level of "credentials" when its modules load; not this
        logger.setLevel(logging.CRITICAL + 1)  # and children (apscheduler.scheduler) inherit this


@dataclass
class _Row:
    tier: str
    inst: InstanceConfig
    region: str
    cells: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def ecs_instances(cfg: Config) -> list[tuple[str, InstanceConfig]]:
    return [(t.name, i) for t in cfg.tiers.values() for i in t.instances if i.provider == "ecs"]


def ram_policy(instances: list[tuple[str, str]]) -> dict:
    """Least privilege for (region, instance_id) pairs.

    Start/Stop are granted per instance ARN. Describe* stays on `*`: it is a list call
    filtered by ids rather than an action on one instance, and Alibaba's own example for
    "manage only instance X" grants `ecs:Describe*` on `Resource: "*"`.
    """
    arns = sorted({f"acs:ecs:{region}:*:instance/{iid}" for region, iid in instances})
    return {
        "Version": "1",
        "Statement": [
            {"Effect": "Allow", "Action": ["ecs:StartInstance", "ecs:StopInstance"], "Resource": arns},
            {"Effect": "Allow", "Action": ["ecs:DescribeInstances", "ecs:DescribeInstanceStatus"], "Resource": "*"},
        ],
    }


async def _check(provider: EcsProvider, row: _Row) -> None:
    """Describe, then dry-run start and stop; every failure is written into the row, never raised."""
    try:
        st = await provider.status(row.inst)
    except ProviderError as exc:
        row.cells["describe"], row.cells["status"] = FAIL, "-"
        row.problems.append(str(exc))
    else:
        found = st.state != MachineState.UNKNOWN
        row.cells["describe"] = OK if found else FAIL
        row.cells["status"] = st.state.value + (" (reclaimed)" if st.reclaimed else "") if found else "not found"
        if not found:
            row.problems.append(f"{row.inst.id}: {st.detail}")
    for action, column in (("StartInstance", "start"), ("StopInstance", "stop")):
        allowed, detail = await provider.dry_run(row.inst, action)
        row.cells[column] = OK if allowed else FAIL
        if not allowed and detail not in row.problems:
            row.problems.append(detail)
        elif allowed and detail.startswith("permitted, but"):
            row.problems.append(f"{row.inst.id}: {action} {detail}")  # e.g. no stock right now: a note, not a failure


def _table(rows: list[_Row]) -> str:
    head = ("INSTANCE", "TIER", "REGION", "DESCRIBE", "STATUS", "START", "STOP")
    lines = [head] + [
        (r.inst.instance_id, r.tier, r.region, r.cells["describe"], r.cells["status"], r.cells["start"], r.cells["stop"])
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


async def doctor(cfg: Config, *, provider: EcsProvider | None = None) -> tuple[str, int]:
    """The printed report and the exit code: 0 when every check passed, 1 otherwise."""
    found = ecs_instances(cfg)
    where = cfg.path or "the config"
    if not found:
        return f"No ECS instances are configured in {where}; nothing to check.", 0
    own = provider is None
    provider = provider or EcsProvider(cfg.providers.ecs, retries=3)
    try:
        return await _report(provider, found, where)
    finally:
        if own:
            await provider.aclose()


async def _report(provider: EcsProvider, found: list[tuple[str, InstanceConfig]], where: str) -> tuple[str, int]:
    out = [f"tiergate doctor: {len(found)} ECS instance(s) in {where}", ""]
    failed = False
    try:
        out.append(f"Credentials: ok, from {await provider.credential_source()}")
    except ProviderError as exc:
        out.append(f"Credentials: NOT FOUND: {exc}")
        failed = True
    rows = [_Row(tier, inst, provider.region(inst)) for tier, inst in found]
    await asyncio.gather(*(_check(provider, row) for row in rows))
    out += ["", _table(rows)]
    failed = failed or any(FAIL in row.cells.values() for row in rows)
    notes = [p for row in rows for p in row.problems]
    if notes:
        out += ["", "Problems and notes:", *(f"  - {p}" for p in notes)]
    policy = ram_policy([(provider.region(inst), inst.instance_id) for _, inst in found])
    out += [
        "",
        "Least-privilege RAM policy for these instances (RAM console > Policies > Create Policy > JSON,",
        "then attach it to the RAM user or role the gateway runs as):",
        json.dumps(policy, indent=2),
        "",
        "Result: " + ("problems found (see above)" if failed else "all checks passed"),
    ]
    return "\n".join(out), 1 if failed else 0
