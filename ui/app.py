"""The Gradio UI of tiergate, mounted at `/` of the gateway's FastAPI app (one process, one port).

Layout: a live tier-status table on top (every tab), then the tabs Chat, Presenter and
Admin. Scripts use `/chat` (gradio_client) or the OpenAI API under `/v1`. Every other UI
handler is private (hidden from the API page) but still reachable with a raw queue call,
so each one checks on the server what it may do (see `session` and `presenter`).

Files: `gr.mount_gradio_app` never marks the app as launched, and Gradio checks that a
file named in a request was uploaded through it only for a launched app; without that, a
raw queue call naming any path on the server made the chat read it. `mount` marks the app
launched, and `engine.read_upload` checks again before reading anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import gradio as gr
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response

from router import routing
from router.auth import LoginLimiter, Throttled
from router.gateway import Gateway

from . import format as fmt
from .admin import AdminTab
from .chat import ChatTab
from .engine import Sessions, build_messages, chat_body, detached, gradio_event, stream_answer
from .presenter import CSS as PRESENTER_CSS
from .presenter import Exports, PresenterTab
from .status import status_html

STATUS_EVERY = 2.0  # seconds between tier-status refreshes

CSS = """
.gradio-container { max-width: 1280px !important; margin: auto; }
#tg-title h1 { margin: 0.2em 0; font-size: 1.5em; }
#tier-status { overflow-x: auto; }
table.tg-status { width: 100%; border-collapse: collapse; font-size: 0.86em; }
table.tg-status th { text-align: left; font-weight: 600; padding: 4px 8px; border-bottom: 2px solid var(--border-color-primary);
  white-space: nowrap; }
table.tg-status td { padding: 4px 8px; border-bottom: 1px solid var(--border-color-primary); vertical-align: top; }
.tg-detail { font-size: 0.85em; opacity: 0.7; max-width: 22em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.tg-state { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; white-space: nowrap; }
.tg-ready { background: #dcfce7; color: #166534; }
.tg-starting { background: #fef3c7; color: #92400e; animation: tg-pulse 1.2s ease-in-out infinite; }
.tg-stopping { background: #ffedd5; color: #9a3412; }
.tg-stopped { background: #f1f5f9; color: #475569; }
.tg-failed { background: #fee2e2; color: #991b1b; }
@keyframes tg-pulse { 50% { opacity: 0.55; } }
.tg-meta { font-size: 0.9em; line-height: 1.9; }
.tg-badge { display: inline-block; padding: 0 8px; margin-right: 6px; border-radius: 10px; background: #eef2ff; color: #3730a3; }
.tg-badge.tg-tier { background: #e0f2fe; color: #075985; font-weight: 600; }
.tg-badge.tg-hit { background: #dcfce7; color: #166534; font-weight: 600; }
.tg-badge.tg-miss { background: #f1f5f9; color: #334155; }
.tg-badge.tg-wait { background: #fef3c7; color: #92400e; }
.tg-warn { color: #b45309; }
#answer-meta { min-height: 1.5em; }
"""

NOTE = (
    "<font size=2>Note: this demo is governed by the original license of Qwen3-VL. Answers of the stand-in worker "
    "are simulated. We strongly advise users not to knowingly generate or allow others to knowingly generate harmful "
    "content. (注：本演示受 Qwen3-VL 的许可协议限制。我们强烈建议，用户不应传播及不应允许他人传播有害信息。)</font>"
)


def build(gw: Gateway, *, limiter: LoginLimiter | None = None, exports: Exports | None = None) -> gr.Blocks:
    """The whole UI; handlers read `gw.cfg` at call time, so a hot-reloaded config applies at once."""
    limiter = limiter or gw.logins
    exports = exports or Exports()
    sessions = Sessions()  # the chat work of every browser session, to cancel it when the page goes
    with gr.Blocks(title="tiergate · Qwen3-VL") as demo:
        gr.Markdown("# tiergate · Qwen3-VL on GPUs that run only when needed", elem_id="tg-title")
        status = gr.HTML("", elem_id="tier-status")
        session = gr.State(None)  # the login of this browser session, kept on the server
        chat = ChatTab(gw, sessions)
        presenter = PresenterTab(gw, chat, session, exports)
        admin = AdminTab(gw, session, limiter)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("💬 Chat 对话", id="tab-chat", elem_id="tab-chat"):
                chat.build()
            with gr.Tab("🎬 Presenter 演示", id="tab-presenter", elem_id="tab-presenter") as presenter_tab:
                presenter.build()
            with gr.Tab("🛠 Admin 管理", id="tab-admin", elem_id="tab-admin"):
                admin.build()
        gr.Markdown(NOTE)
        _chat_api(gw, sessions)

        chat.wire(demo)
        presenter.wire(tabs, presenter_tab)
        admin.wire()
        timer = gr.Timer(STATUS_EVERY)

        async def refresh(request: gr.Request) -> str:
            """The status table, and a sign of life: this page is open (the idle policy keeps its tier up)."""
            if request.session_hash:
                with contextlib.suppress(Exception):
                    await gw.present([f"ui:{request.session_hash}"])
            return await status_html(gw)

        timer.tick(refresh, None, status, show_progress="hidden", queue=False, api_name="status_tick",
                   api_visibility="private")
        demo.load(refresh, None, status, show_progress="hidden", queue=False, api_name="status_load",
                  api_visibility="private")
        admin.wire_page_load(demo)
    demo.queue(default_concurrency_limit=None)  # the gateway queues per tier itself
    return demo


def _chat_api(gw: Gateway, sessions: Sessions) -> None:
    """`/chat` for scripts: text, files, mode, task in; the growing answer and its meta out."""
    default_mode = gw.cfg.routing.default_mode
    with gr.Column(visible=False):
        text = gr.Textbox(label="text")
        files = gr.File(label="files", file_count="multiple", type="filepath")
        mode = gr.Dropdown(list(routing.MODES), value=default_mode, label="mode")
        task = gr.Dropdown(["auto", *routing.TASKS], value="auto", label="task")
        answer = gr.Textbox(label="answer")
        meta = gr.JSON(label="meta")
        trigger = gr.Button("chat")

    async def chat(
        text: str, files: list[str] | None = None, mode: str = default_mode, task: str = "auto",
        request: gr.Request = None,  # type: ignore[assignment] - filled in by Gradio, not part of the API
    ) -> AsyncIterator[tuple[str, dict]]:
        """Ask one question (with optional images/videos); yields (answer so far, meta).

        While the tier boots, meta is {"waiting": {"tier", "stage", "elapsed", "eta", "position"}};
        at the end it is {"tier", "gpu", "task", "cache", "wait_ms", "seconds", "cost", "fallback_reason"}.
        """
        paths = list(files or [])
        labels: dict[str, str] = {}
        session, alive = gradio_event()

        def body() -> dict:
            return chat_body(build_messages([], text or "", paths, labels), mode, task)

        key = session or getattr(request, "session_hash", "") or ""
        source = stream_answer(gw, body, labels, asker=f"ui:{key}" if key else "")
        async with contextlib.aclosing(detached(source, sessions, key, alive)) as batches:
            async for updates in batches:
                for u in updates:
                    if u.kind == "error":
                        raise gr.Error(u.note, title="tiergate")
                shown = [u for u in updates if u.kind != "routed"]
                if not shown:
                    continue
                u = shown[-1]
                if u.kind == "progress":
                    yield "", {"waiting": u.progress}
                else:
                    yield u.text, fmt.meta_dict(u.meta) if u.meta else {}

    trigger.click(chat, [text, files, mode, task], [answer, meta], api_name="chat", concurrency_limit=None,
                  show_progress="hidden")


# The address a login came from, for Gradio's own `/login` route (whose auth callback is not given the request).
_client: ContextVar[str] = ContextVar("tiergate_client", default="unknown")


class _ClientAddress:
    """Remembers each request's client address for the login callback (pure ASGI: same task, same context)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            client = scope.get("client")
            _client.set(str(client[0]) if client else "unknown")
        await self.app(scope, receive, send)


def mount(app: FastAPI, gateway: Gateway) -> FastAPI:
    """Mount the UI at `/` of the gateway app; the API routes registered before it keep precedence."""
    cfg = gateway.cfg
    limiter = gateway.logins
    exports = Exports()
    demo = build(gateway, limiter=limiter, exports=exports)

    async def download_export(token: str) -> Response:
        """A presenter export, served once: the link is the credential, and the file is gone afterwards."""
        found = await asyncio.to_thread(exports.take, token)
        if found is None:
            return JSONResponse({"error": {"message": "no such export: it was downloaded already or expired",
                                           "type": "invalid_request_error", "code": "not_found"}}, status_code=404)
        data, name = found
        return Response(data, media_type="application/x-ndjson", headers={
            "content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"})

    app.add_api_route("/ui/export/{token}", download_export, methods=["GET"], include_in_schema=False)

    auth: Any = None
    if cfg.gateway.require_login:
        async def auth(user: str, password: str) -> bool:
            """Gradio's login page: the same limit as every login, the password checked off the loop."""
            try:
                return await limiter.login(gateway.cfg, _client.get(), user, password) is not None
            except Throttled as exc:
                raise HTTPException(429, detail=f"Too many failed logins; try again in {exc.retry_after} s.",
                                    headers={"Retry-After": str(exc.retry_after)}) from None

        app.add_middleware(_ClientAddress)
    mounted = gr.mount_gradio_app(
        app, demo, path="/", css=CSS + PRESENTER_CSS, theme=gr.themes.Soft(), auth=auth,
        auth_message="tiergate: log in with a user from tiers.toml (or admin / $TIERGATE_ADMIN_TOKEN).",
        footer_links=["api", "gradio"], run_history=False, show_error=True,
        max_file_size=max(cfg.gateway.max_image_size, cfg.gateway.max_video_size),
    )
    # Gradio accepts a file named in a request only if it was uploaded through it, but checks
    # that only once the app counts as launched, which a mounted app never does by itself.
    demo.has_launched = True
    mounted.state.session_check = _session_check(mounted)
    return mounted


def _session_check(app: FastAPI) -> Callable[[dict[str, str]], str | None]:
    """The user of a UI login cookie (Gradio keeps its login tokens in the mounted app): the API takes it too."""
    gradio_app = next(r.app for r in app.routes if getattr(r, "path", None) == "" and hasattr(r, "app"))

    def check(cookies: dict[str, str]) -> str | None:
        cid = gradio_app.cookie_id
        token = cookies.get(f"access-token-{cid}") or cookies.get(f"access-token-unsecure-{cid}")
        return gradio_app.tokens.get(token) if token else None

    return check
