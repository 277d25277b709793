"""Who may call each event of the UI, in one table (for docs/security.md and for review).

Hiding an event from the API page does not protect it: the browser calls every event by
its index, and so can anyone with a raw queue call. So each handler checks on the server
what the caller may do, and this table says what that is, event by event. A test builds
the app and fails when an event has no entry here (or an entry names no event), so the
table cannot drift from the code. `[gateway] require_login` puts Gradio's login page in
front of all of them; "anyone" then means "anyone logged in".
"""

from __future__ import annotations

from typing import Any

ANYONE = "anyone"
LOGIN = "presenter or admin login (anyone with `[presenter] public = true`)"
ADMIN = "admin login"

# api_name -> (who may call it, what it does and what it checks)
ACCESS: dict[str, tuple[str, str]] = {
    # the chat tab: only files uploaded through this gateway (or written by it) are ever read
    "chat": (ANYONE, "the scripts' `/chat` API: one question with uploaded files; streams the answer"),
    "chat_add_turn": (ANYONE, "adds a question to this page's conversation; refuses files that are not images or videos"),
    "chat_respond": (ANYONE, "answers the page's last question; its work is cancelled when the page goes"),
    "chat_respond_again": (ANYONE, "the same, for Regenerate (cache bypassed)"),
    "chat_regenerate": (ANYONE, "marks the page's last question for a new answer"),
    "chat_unlock": (ANYONE, "re-enables the input box"),
    "chat_unlock_again": (ANYONE, "re-enables the input box after Regenerate"),
    "chat_stop": (ANYONE, "cancels this page's answer in flight"),
    "chat_clear": (ANYONE, "empties this page's conversation and cancels its answer in flight"),
    "chat_clear_icon": (ANYONE, "the same, from the chatbot's trash icon"),
    "chat_warm": (ANYONE, "boots the tier an attached file will need (tiers with `warm_on_intent` only)"),
    "unload": (ANYONE, "the page was closed: cancels its answer in flight"),
    "status_tick": (ANYONE, "the tier status table (states, queues, today's GPU time and cost)"),
    "status_load": (ANYONE, "the same, when the page opens"),
    # the presenter tab
    "presenter_list": (ANYONE, f"lists pinned answers; every cached answer (and search) needs a {LOGIN}"),
    "presenter_select": (ANYONE, f"previews a listed answer: pinned ones for anyone, others with a {LOGIN}"),
    "presenter_replay": (ANYONE, f"replays a listed answer into the chat: pinned ones for anyone, others with a {LOGIN}"),
    "presenter_scroll_chat": (ANYONE, "browser-only: scrolls the chat (no server code)"),
    "presenter_export_pinned": (LOGIN, "a demo set of the pinned answers, as a one-time download link"),
    "presenter_export_shown": (LOGIN, "a demo set of the listed answers, as a one-time download link"),
    "presenter_pin": (ADMIN, "pins or unpins an answer (pinned answers never expire and are shown to everyone)"),
    "presenter_import": (ADMIN, "imports a demo set (its answers are pinned and served to everyone)"),
    # the admin tab
    "admin_login": (ANYONE, "logs this page in; limited per source address and per user (back-off in Redis)"),
    "admin_logout": (ANYONE, "logs this page out"),
    "admin_from_login_page": (ANYONE, "with `require_login`: opens the admin panel for an admin admitted by the login page"),
    "admin_load_all": (ADMIN, "fills the config editor, event log and dashboard (nothing without an admin login)"),
    "admin_load_all_on_page_load": (ADMIN, "the same, when the page opens"),
    "admin_start": (ADMIN, "starts a tier"),
    "admin_prewarm": (ADMIN, "pre-warms a tier"),
    "admin_stop": (ADMIN, "stops a tier"),
    "admin_events": (ADMIN, "the lifecycle event log"),
    "admin_poll_events": (ADMIN, "the same, refreshed (nothing without an admin login)"),
    "admin_config": (ADMIN, "reads tiers.toml"),
    "admin_validate": (ADMIN, "validates a config text"),
    "admin_save": (ADMIN, "saves and hot-reloads tiers.toml"),
    "admin_costs": (ADMIN, "the cost dashboard"),
}

# Routes the UI adds to the gateway next to Gradio's own.
ROUTES: dict[str, tuple[str, str]] = {
    "GET /ui/export/{token}": (ANYONE, "a presenter export, once: the random token is the credential; 404 afterwards"),
}


def event_table(config: dict[str, Any]) -> list[dict[str, str]]:
    """One row per event of a running UI's `/config`: name, visibility, who may call it, what it does.

    Raises KeyError naming an event this module does not describe.
    """
    rows = []
    for dep in config["dependencies"]:
        name = dep.get("api_name") or ""
        who, what = ACCESS[name]
        rows.append({"event": name, "visibility": dep.get("api_visibility", ""), "who": who, "what": what})
    return rows


def markdown(config: dict[str, Any]) -> str:
    """The table as Markdown, for docs/security.md."""
    lines = ["| UI event | on the API page | who may call it | does |", "|---|---|---|---|"]
    lines += [f"| `{r['event']}` | {r['visibility']} | {r['who']} | {r['what']} |" for r in event_table(config)]
    lines += [f"| `{route}` (route) | - | {who} | {what} |" for route, (who, what) in ROUTES.items()]
    return "\n".join(lines) + "\n"


def current_markdown() -> str:
    """The table of the UI as the packaged config builds it (no server started, nothing written in place)."""
    import tempfile

    from router.config import load_config
    from router.gateway import Gateway

    from .app import build

    cfg = load_config(None)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"data_dir": tmp})})
        demo = build(Gateway(cfg))
        return markdown(demo.get_config_file())


if __name__ == "__main__":  # python -m ui.access: the UI table of docs/security.md
    print(current_markdown(), end="")
