"""The chat tab: the upstream Qwen3-VL web demo, in front of GPU tiers that may be asleep.

The conversation lives in a `gr.State` list of turns (question, files, answer, status);
the chatbot is redrawn from it on every update, so a stopped or failed answer is never
half-kept. Failed turns are left out of what is sent next, so one corrupt upload does not
poison the rest of the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from router import routing
from router.gateway import Gateway

from . import format as fmt
from .engine import Update, build_messages, chat_body, stream_answer

log = logging.getLogger("tiergate.ui")

# text, files, answer, status (pending|waiting|streaming|done|error|replayed), note, footer, cache, and
# `stopped` (True: Stop pressed; "cleared": Clear pressed), set in place so a running answer sees it.
Turn = dict[str, Any]

MODE_CHOICES = [("Speed 速度", "speed"), ("Balanced 均衡", "balanced"), ("Quality 质量", "quality")]
TASK_CHOICES = [("Auto 自动", "auto")] + [(t, t) for t in routing.TASKS]
RUNNING = ("pending", "waiting", "streaming")

WELCOME = (
    "<center><font size=6><b>Qwen3-VL</b></font></center>"
    "<center>Ask about an image or a video. GPUs start when you need them: the first answer after a quiet "
    "spell waits for the machine to boot; repeats come from the cache at once.</center>"
    "<center>上传图片或视频并提问。GPU 按需启动：空闲后的首个回答需要等待开机，重复的问题直接从缓存返回。</center>"
)


def new_turn(text: str, files: list[str], *, use_cache: bool = True) -> Turn:
    return {"text": text, "files": files, "answer": "", "status": "pending", "note": "", "footer": "", "cache": use_cache}


def status_of(t: Turn) -> str:
    """A running turn whose Stop was pressed counts as stopped, even before its task notices."""
    return "stopped" if t.get("stopped") and t["status"] in RUNNING else t["status"]


def history_of(turns: list[Turn]) -> list[tuple[str, list[str], str]]:
    """Earlier turns worth sending again: answered (or stopped with some text), never failed ones."""
    return [
        (t["text"], t["files"], t["answer"])
        for t in turns
        if status_of(t) in ("done", "stopped", "replayed") and t["answer"]
    ]


def bot_text(t: Turn) -> str:
    status = status_of(t)
    if status in ("pending", "waiting"):
        return t["note"] or "⏳ …"
    if status == "streaming":
        return t["answer"] or "…"
    if status in ("done", "replayed"):
        return t["answer"] + (f"\n\n<sub>{t['footer']}</sub>" if t["footer"] else "")
    if status == "stopped":
        why = "⏹ *Stopped.*" if t["answer"] else "⏹ *Stopped before the GPU was ready; the tier stops by itself when idle.*"
        return (t["answer"] + "\n\n" if t["answer"] else "") + why
    return (t["answer"] + "\n\n" if t["answer"] else "") + t["note"]


def render(turns: list[Turn]) -> list[dict]:
    """Turns as Gradio 6 chatbot messages: files and text in one user bubble, then the bot bubble."""
    messages: list[dict] = []
    for t in turns:
        content: list[Any] = [{"path": f} for f in t["files"]]
        if t["text"]:
            content.append(t["text"])
        messages.append({"role": "user", "content": content or "(empty)"})
        messages.append({"role": "assistant", "content": bot_text(t)})
    return messages


def apply(turn: Turn, u: Update, *, regenerate: bool = False) -> str | None:
    """Fold an update into the turn; returns new `answer-meta` HTML when there is some."""
    if u.kind == "progress":
        turn.update(status="waiting", note=u.note)
        return '<div class="tg-meta"><span class="tg-badge tg-wait">⏳ waiting for the GPU to start</span></div>'
    turn["answer"] = u.text
    if u.kind == "text":
        turn["status"] = "streaming"
        return None
    if u.kind == "error":
        turn.update(status="error", note=u.note)
        return fmt.meta_html(u.meta, regenerate=regenerate) if u.meta else '<div class="tg-meta">no answer</div>'
    assert u.meta is not None
    turn.update(status="done", note="", footer=fmt.meta_line(u.meta, regenerate=regenerate))
    return fmt.meta_html(u.meta, regenerate=regenerate)


class ChatTab:
    """Builds the tab and holds the handlers, which need the gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def build(self) -> None:
        cfg = self.gw.cfg
        gr.Markdown(WELCOME)
        self.turns = gr.State([])
        self.warmed = gr.State("")
        self.chatbot = gr.Chatbot(
            label="Qwen3-VL", elem_id="chatbot", height=480, buttons=["copy", "copy_all"],
            feedback_options=None, placeholder="Upload an image or video and ask a question. 上传图片或视频并提问。",
            latex_delimiters=[{"left": "$$", "right": "$$", "display": True}],
        )
        self.meta = gr.HTML("", elem_id="answer-meta")
        self.input = gr.MultimodalTextbox(
            elem_id="chat-input", file_types=["image", "video"], file_count="multiple", lines=2,
            placeholder="Type a question, attach images or videos… 输入问题，可附带图片或视频",
            label="Input 输入", show_label=False, sources=["upload"],
        )
        with gr.Row():
            self.submit_btn = gr.Button("🚀 Submit (发送)", variant="primary", elem_id="submit-btn")
            self.stop_btn = gr.Button("⏹ Stop (停止)", variant="stop", elem_id="stop-btn")
            self.regen_btn = gr.Button("🤔️ Regenerate (重试)", elem_id="regen-btn")
            self.clear_btn = gr.Button("🧹 Clear History (清除历史)", elem_id="clear-btn")
        with gr.Row():
            self.mode = gr.Radio(MODE_CHOICES, value=cfg.routing.default_mode, label="Mode 模式", elem_id="mode",
                                 info="Speed: smallest GPU that fits · Quality: the biggest")
            self.task = gr.Dropdown(TASK_CHOICES, value="auto", label="Task 任务", elem_id="task",
                                    info="Auto picks from your wording and attachments")

    def wire(self) -> None:
        outs = [self.chatbot, self.turns, self.meta]
        private: dict[str, Any] = {"api_visibility": "private"}
        send = gr.on([self.input.submit, self.submit_btn.click], self.add_turn, [self.input, self.turns],
                     [self.chatbot, self.turns, self.input], queue=False, **private)
        self.answering = send.then(self.respond, [self.turns, self.mode, self.task], outs,
                                   show_progress="hidden", concurrency_limit=None, **private)
        self.answering.then(self.unlock, None, [self.input], queue=False, **private)
        regen = self.regen_btn.click(self.regenerate, [self.turns], [self.chatbot, self.turns, self.input],
                                     queue=False, **private)
        self.regenerating = regen.then(self.respond, [self.turns, self.mode, self.task], outs,
                                       show_progress="hidden", concurrency_limit=None, **private)
        self.regenerating.then(self.unlock, None, [self.input], queue=False, **private)
        running = [self.answering, self.regenerating]
        self.stop_btn.click(self.stop, [self.turns], [self.chatbot, self.turns, self.meta, self.input], cancels=running,
                            queue=False, **private)
        self.clear_btn.click(self.clear, [self.turns], [self.chatbot, self.turns, self.meta, self.input], cancels=running,
                             queue=False, **private)
        self.input.change(self.warm, [self.input, self.turns, self.mode, self.task, self.warmed], [self.warmed],
                          show_progress="hidden", trigger_mode="always_last", queue=False, **private)

    # --- handlers -------------------------------------------------------------------------

    def add_turn(self, value: dict | None, turns: list[Turn]) -> tuple:
        value = value or {}
        text, files = (value.get("text") or "").strip(), list(value.get("files") or [])
        if not text and not files or any(status_of(t) in RUNNING for t in turns):
            return render(turns), turns, gr.skip()
        turns = [*turns, new_turn(text, files)]
        return render(turns), turns, gr.MultimodalTextbox(value=None, interactive=False)

    def regenerate(self, turns: list[Turn]) -> tuple:
        if not turns or status_of(turns[-1]) in RUNNING:
            return render(turns), turns, gr.skip()
        last = turns[-1]
        turns = [*turns[:-1], new_turn(last["text"], last["files"], use_cache=False)]
        return render(turns), turns, gr.MultimodalTextbox(interactive=False)

    async def respond(self, turns: list[Turn], mode: str, task: str) -> AsyncIterator[tuple]:
        """Stream the last (pending) turn's answer into its bubble, boot progress first."""
        if not turns or turns[-1]["status"] != "pending":
            yield render(turns), turns, gr.skip()
            return
        turn = turns[-1]
        regenerate = not turn["cache"]
        history = history_of(turns[:-1])

        def build() -> dict:
            return chat_body(build_messages(history, turn["text"], turn["files"]), mode, task, use_cache=turn["cache"])

        turn.update(status="waiting", note="⏳ Routing your request… 正在分配算力")
        yield render(turns), turns, '<div class="tg-meta">…</div>'
        async with contextlib.aclosing(stream_answer(self.gw, build)) as updates:
            async for u in updates:
                if turn.get("stopped"):
                    break  # closing the stream releases the GPU lease at once
                meta = apply(turn, u, regenerate=regenerate)
                yield render(turns), turns, meta if meta is not None else gr.skip()
        if turn.get("stopped") is True:
            yield render(turns), turns, gr.skip()  # the last word: whatever arrived before, it shows stopped

    def unlock(self) -> Any:
        return gr.MultimodalTextbox(interactive=True)

    def stop(self, turns: list[Turn]) -> tuple:
        """Marks the running turn in place: the answering task sees it even if the cancel comes late."""
        if not turns or turns[-1]["status"] not in RUNNING:
            return render(turns), turns, gr.skip(), gr.MultimodalTextbox(interactive=True)
        turns[-1]["stopped"] = True
        meta = '<div class="tg-meta"><span class="tg-badge">⏹ stopped</span> the GPU is released; nothing more is billed</div>'
        return render(turns), turns, meta, gr.MultimodalTextbox(interactive=True)

    def clear(self, turns: list[Turn]) -> tuple:
        for t in turns:
            t["stopped"] = "cleared"  # a running answer stops without redrawing the old conversation
        return [], [], "", gr.MultimodalTextbox(value=None, interactive=True)

    async def warm(self, value: dict | None, turns: list[Turn], mode: str, task: str, warmed: str) -> str:
        """Warm-up on intent: an attached file says a question is coming, so boot its tier now."""
        files = list((value or {}).get("files") or [])
        tiers = self.gw.cfg.tiers
        if not files or not any(t.warm_on_intent for t in tiers.values()):
            return warmed
        key = "|".join([*files, mode or "", task or ""])
        if key == warmed:
            return warmed
        text = (value or {}).get("text") or ""
        history = history_of(turns)
        try:
            body = await asyncio.to_thread(lambda: chat_body(build_messages(history, text, files), mode, task))
            req = await asyncio.to_thread(self.gw.prepare, body)
        except Exception:  # noqa: BLE001 - a bad file is reported when it is sent, not here
            return key
        if await self.gw.warm(req, "warm on intent: a user attached a file"):
            log.info("warm on intent: starting tier %s", req.tier)
        return key
