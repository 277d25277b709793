"""The Gradio UI of tiergate, mounted at `/` of the gateway's FastAPI app (one process, one port).

Layout: a live tier-status table on top (every tab), then the tabs Chat, Presenter and
Admin. Scripts use `/chat` (gradio_client) or the OpenAI API under `/v1`; every other
UI handler is private, except the admin ones, which are callable but check the login.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr
from fastapi import FastAPI

from router import routing
from router.auth import check_login
from router.gateway import Gateway

from . import format as fmt
from .admin import AdminTab
from .chat import ChatTab
from .engine import build_messages, chat_body, stream_answer
from .presenter import PresenterTab
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


def build(gw: Gateway) -> gr.Blocks:
    """The whole UI; handlers read `gw.cfg` at call time, so a hot-reloaded config applies at once."""
    with gr.Blocks(title="tiergate · Qwen3-VL") as demo:
        gr.Markdown("# tiergate · Qwen3-VL on GPUs that run only when needed", elem_id="tg-title")
        status = gr.HTML("", elem_id="tier-status")
        session = gr.State(None)  # the admin login of this browser session, kept on the server
        chat = ChatTab(gw)
        presenter = PresenterTab(gw, chat, session)
        admin = AdminTab(gw, session)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("💬 Chat 对话", id="tab-chat", elem_id="tab-chat"):
                chat.build()
            with gr.Tab("🎬 Presenter 演示", id="tab-presenter", elem_id="tab-presenter") as presenter_tab:
                presenter.build()
            with gr.Tab("🛠 Admin 管理", id="tab-admin", elem_id="tab-admin"):
                admin.build()
        gr.Markdown(NOTE)
        _chat_api(gw)

        chat.wire()
        presenter.wire(tabs)
        admin.wire()
        presenter_tab.select(presenter.list, [presenter.query], presenter.listing, api_visibility="private")
        timer = gr.Timer(STATUS_EVERY)

        async def refresh() -> str:
            return await status_html(gw)

        timer.tick(refresh, None, status, show_progress="hidden", queue=False, api_visibility="private")
        demo.load(refresh, None, status, show_progress="hidden", queue=False, api_visibility="private")
        admin.wire_page_load(demo)
    demo.queue(default_concurrency_limit=None)  # the gateway queues per tier itself
    return demo


def _chat_api(gw: Gateway) -> None:
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
        text: str, files: list[str] | None = None, mode: str = default_mode, task: str = "auto"
    ) -> AsyncIterator[tuple[str, dict]]:
        """Ask one question (with optional images/videos); yields (answer so far, meta).

        While the tier boots, meta is {"waiting": {"tier", "stage", "elapsed", "eta", "position"}};
        at the end it is {"tier", "gpu", "task", "cache", "wait_ms", "seconds", "cost", "fallback_reason"}.
        """
        paths = list(files or [])

        def body() -> dict:
            return chat_body(build_messages([], text or "", paths), mode, task)

        async for u in stream_answer(gw, body):
            if u.kind == "progress":
                yield "", {"waiting": u.progress}
            elif u.kind == "error":
                raise gr.Error(u.note, title="tiergate")
            else:
                yield u.text, fmt.meta_dict(u.meta) if u.meta else {}

    trigger.click(chat, [text, files, mode, task], [answer, meta], api_name="chat", concurrency_limit=None,
                  show_progress="hidden")


def mount(app: FastAPI, gateway: Gateway) -> FastAPI:
    """Mount the UI at `/` of the gateway app; the API routes registered before it keep precedence."""
    demo = build(gateway)
    auth: Any = None
    if gateway.cfg.gateway.require_login:
        def auth(user: str, password: str) -> bool:
            return check_login(gateway.cfg, user, password)
    app = gr.mount_gradio_app(
        app, demo, path="/", css=CSS, theme=gr.themes.Soft(), auth=auth,
        auth_message="tiergate: log in with an admin user from tiers.toml (or admin / $TIERGATE_ADMIN_TOKEN).",
        footer_links=["api", "gradio"], run_history=False, show_error=True,
    )
    app.state.session_check = _session_check(app)
    return app


def _session_check(app: FastAPI) -> Callable[[dict[str, str]], str | None]:
    """The user of a UI login cookie (Gradio keeps its login tokens in the mounted app)."""
    gradio_app = next(r.app for r in app.routes if getattr(r, "path", None) == "" and hasattr(r, "app"))

    def check(cookies: dict[str, str]) -> str | None:
        cid = gradio_app.cookie_id
        token = cookies.get(f"access-token-{cid}") or cookies.get(f"access-token-unsecure-{cid}")
        return gradio_app.tokens.get(token) if token else None

    return check
