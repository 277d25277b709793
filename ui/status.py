"""The live tier table above the tabs: what each GPU is doing and what it cost today.

Everything comes from shared Redis (`Gateway.tiers_status` plus today's day counters), so
a tier started by another gateway process shows here too.
"""

from __future__ import annotations

from router.gateway import Gateway

from . import format as fmt
from .format import esc

BADGE = {"ready": "🟢", "starting": "🟡", "stopping": "🟠", "stopped": "⚪", "failed": "🔴"}


async def snapshot(gw: Gateway) -> list[dict]:
    """The gateway's status rows (each with `today`: starts, gpu_seconds, cost, cache_hits)."""
    return await gw.status()


def state_cell(row: dict) -> str:
    state = row["state"]
    detail = ""
    if state == "starting":
        stages = [i.get("stage") for i in row["instances"] if i["state"] == "starting" and i.get("stage")]
        detail = stages[0] if stages else "starting machine"
        detail += f" · boot ≈ {fmt.seconds(row.get('boot_eta'))}"
    elif state == "failed" and row.get("reason"):
        detail = row["reason"]
    out = f'<span class="tg-state tg-{esc(state)}">{BADGE.get(state, "")} {esc(state)}</span>'
    if detail:
        out += f'<div class="tg-detail" title="{esc(detail)}">{esc(detail[:90])}</div>'
    return out


def idle_cell(row: dict) -> str:
    if row["state"] != "ready":
        return "-"
    if row.get("idle_for") is None:
        return "busy"
    return f"idle {fmt.seconds(row['idle_for'])}<br><b>stops in {fmt.seconds(row.get('stops_in'))}</b>"


def render(rows: list[dict]) -> str:
    """An HTML table with state badges; one row per tier."""
    head = ("Tier", "GPU", "State", "Instances", "In flight / queued", "Idle → stop",
            "Starts today", "GPU time today", "Cost today", "Saved vs always-on")
    body = []
    for r in rows:
        up = sum(1 for i in r["instances"] if i["state"] == "ready")
        today = r.get("today", {})
        saving = r.get("saving", 0.0)
        always = r.get("always_on_cost", 0.0)
        pct = f" ({saving / always:.0%})" if always > 0 else ""
        body.append(
            "<tr>"
            f'<td><b>{esc(r["name"])}</b><div class="tg-detail">{esc(r.get("model", ""))}</div></td>'
            f"<td>{esc(r['gpu'])}</td>"
            f"<td>{state_cell(r)}</td>"
            f"<td>{up}/{len(r['instances'])}</td>"
            f"<td>{r['inflight']} / {r['queued']}</td>"
            f"<td>{idle_cell(r)}</td>"
            f"<td>{today.get('starts', 0)}</td>"
            f"<td>{fmt.seconds(today.get('gpu_seconds', 0.0))}</td>"
            f"<td>{fmt.money(today.get('cost', 0.0))}</td>"
            f'<td title="always-on would have cost {fmt.money(always)}">{fmt.money(saving)}{pct}</td>'
            "</tr>"
        )
    cols = "".join(f"<th>{h}</th>" for h in head)
    return f'<table class="tg-status"><thead><tr>{cols}</tr></thead><tbody>{"".join(body)}</tbody></table>'


async def status_html(gw: Gateway) -> str:
    try:
        return render(await snapshot(gw))
    except Exception as exc:  # noqa: BLE001 - Redis hiccup: say so, keep the page alive
        return f'<div class="tg-warn">tier status unavailable: {esc(exc)}</div>'
