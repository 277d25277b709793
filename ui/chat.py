"""The chat tab: the upstream Qwen3-VL web demo, in front of GPU tiers that may be asleep.

The conversation is one `Conversation` per browser session, kept in a `gr.State` and
changed in place, never replaced: what the screen shows is drawn from it, and what is
sent to the GPU is built from it, so the two cannot drift apart. (They did: the answering
generator wrote its own copy of the turn list back on every update, so a Clear pressed
while an answer was running could be undone by the next update, and Gradio re-sent the
generator's last full chatbot when it ended, putting the cleared turns back on screen;
the chatbot's own trash icon cleared only the screen.) Every way of clearing (the Clear
button, the trash icon, a new page) leaves an empty conversation and cancels the answer
in flight; a running answer of a cleared conversation writes nothing more.

Failed turns are left out of what is sent next, so one corrupt upload does not poison
the rest of the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from router import routing
from router.errors import BadRequest
from router.gateway import Gateway

from . import format as fmt
from .engine import Sessions, Update, build_messages, chat_body, detached, gradio_event, media_kind, stream_answer

log = logging.getLogger("tiergate.ui")

# text, files, answer, status (pending|waiting|streaming|done|error|replayed), note, footer, cache, and
# `stopped` (True: Stop pressed; "cleared": the conversation was cleared), `stop_note` (what Stop did).
Turn = dict[str, Any]

MODE_CHOICES = [("Speed 速度", "speed"), ("Balanced 均衡", "balanced"), ("Quality 质量", "quality")]
TASK_CHOICES = [("Auto 自动", "auto")] + [(fmt.task_words(t), t) for t in routing.TASKS]
RUNNING = ("pending", "waiting", "streaming")

WELCOME = (
    "<center><font size=6><b>Qwen3-VL</b></font></center>"
    "<center>Ask about an image or a video. GPUs start when you need them: the first answer after a quiet "
    "spell waits while the machine boots. The same question with the same files, asked at the start of a "
    "conversation (or after Clear), comes from the cache at once; a follow-up carries the conversation before it, "
    "so it is a new question for the GPU.</center>"
    "<center>上传图片或视频并提问。GPU 按需启动：空闲后的首个回答需要等待开机。在新对话（或清除历史后）重复提出的相同问题和文件直接从缓存返回；"
    "追问会带上之前的对话，因此需要 GPU 重新回答。</center>"
)
WAITING_META = '<div class="tg-meta"><span class="tg-badge tg-wait">⏳ waiting for the {tier} GPU to start · 等待 GPU 启动</span></div>'
ROUTING_META = '<div class="tg-meta">…</div>'


@dataclass
class Conversation:
    """One browser session's conversation; handlers change it in place and never swap it."""

    turns: list[Turn] = field(default_factory=list)
    epoch: int = 0  # bumped by every clear: an answer started before it writes nothing after it


@dataclass
class Running:
    """The answer in flight in a session: what Stop needs to say what it did."""

    turn: Turn
    stage: str = "preparing"  # preparing | waiting (for a boot) | answering
    tier: str = ""
    queued: bool = False  # this request has been in the tier's boot queue


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
        if t["answer"]:
            return t["answer"] + "\n\n⏹ *Stopped. 已停止*"
        return t.get("stop_note") or "⏹ *Stopped. 已停止*"
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


def stopped_html(note: str) -> str:
    return f'<div class="tg-meta"><span class="tg-badge">⏹ stopped · 已停止</span> {fmt.esc(note.removeprefix("⏹ "))}</div>'


def refused_html(text: str) -> str:
    return f'<div class="tg-meta"><span class="tg-warn">⚠️ {fmt.esc(text)}</span></div>'


class ChatTab:
    """Builds the tab and holds the handlers, which need the gateway."""

    def __init__(self, gateway: Gateway, sessions: Sessions | None = None) -> None:
        self.gw = gateway
        self.sessions = sessions or Sessions()
        self.runs: dict[str, Running] = {}  # session -> its answer in flight

    def build(self) -> None:
        cfg = self.gw.cfg
        gr.Markdown(WELCOME)
        self.conv = gr.State(Conversation())
        self.warmed = gr.State("")
        self.chatbot = gr.Chatbot(
            label="Qwen3-VL", elem_id="chatbot", height=480, buttons=["copy", "copy_all"],
            feedback_options=None, placeholder="Upload an image or video and ask a question. 上传图片或视频并提问。",
            latex_delimiters=[{"left": "$$", "right": "$$", "display": True}],
        )
        self.meta = gr.HTML("", elem_id="answer-meta")
        # One line that grows: Gradio 6 sends on Enter only when `lines == 1` (with more lines,
        # Enter is a newline and Shift+Enter sends). Any file type is accepted here so that a
        # wrong one is refused with the message kept, instead of silently dropped with a toast.
        self.input = gr.MultimodalTextbox(
            elem_id="chat-input", file_count="multiple", lines=1, max_lines=8,
            placeholder="Type a question, attach images or videos · Enter sends, Shift+Enter adds a line · "
                        "输入问题，可附带图片或视频（回车发送，Shift+回车换行）",
            label="Input 输入", show_label=False, sources=["upload"],
        )
        with gr.Row():
            self.submit_btn = gr.Button("🚀 Submit (发送)", variant="primary", elem_id="submit-btn")
            self.stop_btn = gr.Button("⏹ Stop (停止)", variant="stop", elem_id="stop-btn")
            self.regen_btn = gr.Button("🤔️ Regenerate (重试)", elem_id="regen-btn")
            self.clear_btn = gr.Button("🧹 Clear History (清除历史)", elem_id="clear-btn")
        with gr.Row():
            self.mode = gr.Radio(MODE_CHOICES, value=cfg.routing.default_mode, label="Mode 模式", elem_id="mode",
                                 info="Speed: the smallest GPU that fits · Quality: the biggest · "
                                      "速度：够用的最小 GPU · 质量：最大的 GPU")
            self.task = gr.Dropdown(TASK_CHOICES, value="auto", label="Task 任务", elem_id="task",
                                    info="Auto picks from your wording and attachments · 自动：根据问题和附件选择")

    def wire(self, demo: gr.Blocks) -> None:
        private: dict[str, Any] = {"api_visibility": "private"}
        send = gr.on([self.input.submit, self.submit_btn.click], self.add_turn, [self.input, self.conv],
                     [self.chatbot, self.input, self.meta], queue=False, api_name="chat_add_turn", **private)
        answering = send.then(self.respond, [self.conv, self.mode, self.task], [self.chatbot, self.meta],
                              show_progress="hidden", concurrency_limit=None, api_name="chat_respond", **private)
        answering.then(self.unlock, None, [self.input], queue=False, api_name="chat_unlock", **private)
        regen = self.regen_btn.click(self.regenerate, [self.conv], [self.chatbot, self.input], queue=False,
                                     api_name="chat_regenerate", **private)
        regenerating = regen.then(self.respond, [self.conv, self.mode, self.task], [self.chatbot, self.meta],
                                  show_progress="hidden", concurrency_limit=None, api_name="chat_respond_again",
                                  **private)
        regenerating.then(self.unlock, None, [self.input], queue=False, api_name="chat_unlock_again", **private)
        # Stop and clear cancel the running answer themselves (through `sessions`), so Stop can
        # read the tier's queue before this request leaves it; no Gradio `cancels=` needed.
        self.stop_btn.click(self.stop, [self.conv], [self.chatbot, self.meta, self.input], queue=False,
                            api_name="chat_stop", **private)
        self.clear_btn.click(self.clear, [self.conv], [self.chatbot, self.meta, self.input], queue=False,
                             api_name="chat_clear", **private)
        self.chatbot.clear(self.clear_from_icon, [self.conv], [self.chatbot, self.meta, self.input], queue=False,
                           api_name="chat_clear_icon", **private)
        self.input.change(self.warm, [self.input, self.conv, self.mode, self.task, self.warmed], [self.warmed],
                          show_progress="hidden", trigger_mode="always_last", queue=False, api_name="chat_warm",
                          **private)
        demo.unload(self.unload)

    # --- handlers -------------------------------------------------------------------------

    def add_turn(self, value: dict | None, conv: Conversation, request: gr.Request) -> tuple:
        value = value or {}
        text, files = (value.get("text") or "").strip(), list(value.get("files") or [])
        if not text and not files or self._busy(conv, request):
            return render(conv.turns), gr.skip(), gr.skip()
        refused = []
        for f in files:
            try:
                media_kind(f)
            except BadRequest:
                refused.append(Path(f).name)
        if refused:  # say so and keep the message: sending without the file would answer another question
            why = (f"Not sent: {', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not an image or a video. "
                   "Remove it (the × on the file) and send again. 未发送：只能附加图片或视频，请移除该文件后重新发送。")
            gr.Warning(why, title="Only images and videos")
            return render(conv.turns), gr.skip(), refused_html(why)
        conv.turns.append(new_turn(text, files))
        return render(conv.turns), gr.MultimodalTextbox(value=None, interactive=False), ROUTING_META

    def regenerate(self, conv: Conversation, request: gr.Request) -> tuple:
        if not conv.turns or self._busy(conv, request):
            return render(conv.turns), gr.skip()
        last = conv.turns[-1]
        conv.turns[-1] = new_turn(last["text"], last["files"], use_cache=False)
        return render(conv.turns), gr.MultimodalTextbox(interactive=False)

    async def respond(self, conv: Conversation, mode: str, task: str, request: gr.Request) -> AsyncIterator[tuple]:
        """Stream the last (pending) turn's answer into its bubble, boot progress first.

        The work runs in a task registered for this session (see `engine.detached`), so a
        Stop, a clear or a closed page cancels it at any stage and its lease is released.
        """
        turn = conv.turns[-1] if conv.turns else None
        session, alive = gradio_event()
        session = session or request.session_hash or ""
        if turn is None or turn["status"] != "pending" or session in self.runs:
            yield render(conv.turns), gr.skip()
            return
        epoch = conv.epoch
        run = self.runs[session] = Running(turn)
        regenerate = not turn["cache"]
        history = history_of(conv.turns[:-1])
        labels: dict[str, str] = {}

        def build() -> dict:
            return chat_body(build_messages(history, turn["text"], turn["files"], labels), mode, task,
                             use_cache=turn["cache"])

        async def work() -> AsyncIterator[str | None]:
            try:
                async for u in stream_answer(self.gw, build, labels, asker=f"ui:{session}" if session else ""):
                    yield self._apply(run, u, regenerate=regenerate)
            except asyncio.CancelledError:
                if not turn.get("stopped"):  # cancelled without a Stop: the page or its connection went away
                    turn.update(stopped=True, stop_note="⏹ Cancelled: the page stopped listening. 已取消：页面已断开。")
                raise
            finally:
                if self.runs.get(session) is run:
                    del self.runs[session]

        turn.update(status="waiting", note="⏳ Routing your request… 正在分配算力")
        yield render(conv.turns), ROUTING_META
        async with contextlib.aclosing(detached(work(), self.sessions, session, alive)) as batches:
            async for metas in batches:
                if conv.epoch != epoch or turn.get("stopped"):
                    break  # cleared or stopped: the handler that did it has drawn the screen
                meta = next((m for m in reversed(metas) if m is not None), None)
                yield render(conv.turns), meta if meta is not None else gr.skip()
        # The last word, whatever happened meanwhile: Gradio re-sends this event's last output
        # in full when it ends, so it must be the conversation as it is now.
        if conv.epoch != epoch:
            yield render(conv.turns), ""
        elif turn.get("stopped") is True:
            yield render(conv.turns), stopped_html(turn.get("stop_note", ""))
        else:
            yield render(conv.turns), gr.skip()

    def _apply(self, run: Running, u: Update, *, regenerate: bool = False) -> str | None:
        """Fold an update into the turn; returns new `answer-meta` HTML when there is some."""
        turn = run.turn
        if u.kind == "routed":
            run.tier = (u.progress or {}).get("tier", "")
            run.stage = "answering"  # until the tier turns out to need a boot
            return None
        if u.kind == "progress":
            first = turn["status"] != "waiting" or run.stage != "waiting"
            run.stage, run.queued = "waiting", True
            run.tier = (u.progress or {}).get("tier", run.tier)
            turn.update(status="waiting", note=u.note)
            return WAITING_META.format(tier=fmt.esc(run.tier)) if first else None
        run.stage = "answering"
        turn["answer"] = u.text
        if u.kind == "text":
            if turn["status"] != "streaming":
                turn["status"] = "streaming"
                tier = u.meta.tier if u.meta else run.tier
                return fmt.streaming_html(tier, u.meta.gpu if u.meta else "")
            return None
        if u.kind == "error":
            turn.update(status="error", note=u.note)
            return fmt.meta_html(u.meta, regenerate=regenerate) if u.meta else '<div class="tg-meta">no answer · 无回答</div>'
        assert u.meta is not None
        turn.update(status="done", note="", footer=fmt.meta_line(u.meta, regenerate=regenerate))
        return fmt.meta_html(u.meta, regenerate=regenerate)

    def unlock(self) -> Any:
        return gr.MultimodalTextbox(interactive=True)

    async def stop(self, conv: Conversation, request: gr.Request) -> tuple:
        """Cancel the answer in flight and say what that did to the GPU (see `fmt.stop_note`)."""
        session = request.session_hash or ""
        run = self.runs.get(session)
        last = conv.turns[-1] if conv.turns else None
        if run is None and last is not None and status_of(last) in RUNNING:
            # its answering event never ran (the page's connection dropped in between): unstick it
            last.update(stopped=True, stop_note=fmt.stop_note("preparing", "", "", 0, None))
            return render(conv.turns), stopped_html(last["stop_note"]), gr.MultimodalTextbox(interactive=True)
        if run is None or run.turn.get("stopped") or status_of(run.turn) not in RUNNING:
            return render(conv.turns), gr.skip(), gr.MultimodalTextbox(interactive=True)
        note = await self._stop_note(run)  # before cancelling: this request still counts in the queue
        run.turn.update(stopped=True, stop_note=note)
        await self.sessions.cancel(session, "Stop pressed")
        return render(conv.turns), stopped_html(note), gr.MultimodalTextbox(interactive=True)

    async def _stop_note(self, run: Running) -> str:
        tier_cfg = self.gw.cfg.tiers.get(run.tier)
        gpu, idle = (tier_cfg.gpu, tier_cfg.idle_timeout) if tier_cfg else ("", None)
        if run.turn["status"] == "streaming" or not run.tier:
            return fmt.stop_note("answering" if run.tier else "preparing", run.tier, gpu, 0, idle)
        try:
            row = next((r for r in await self.gw.status() if r["name"] == run.tier), None)
        except Exception:  # a Redis hiccup: say the safe thing, still stop
            log.warning("could not read the tier status for a Stop message", exc_info=True)
            row = None
        if row is None:
            return fmt.stop_note("answering", run.tier, gpu, 0, idle)
        if row["state"] == "ready" and run.stage != "waiting":
            return fmt.stop_note("answering", run.tier, gpu, 0, idle)
        others = int(row.get("queued") or 0) - (1 if run.queued else 0)
        return fmt.stop_note("waiting", run.tier, gpu, others, idle)

    async def clear(self, conv: Conversation, request: gr.Request) -> tuple:
        await self._clear(conv, request, "Clear History pressed")
        return [], "", gr.MultimodalTextbox(value=None, interactive=True)

    async def clear_from_icon(self, conv: Conversation, request: gr.Request) -> tuple:
        """The chatbot's own trash icon: the screen is already empty, so the conversation must be too."""
        await self._clear(conv, request, "the chatbot's clear icon")
        return [], "", gr.MultimodalTextbox(interactive=True)

    async def _clear(self, conv: Conversation, request: gr.Request, why: str) -> None:
        conv.epoch += 1
        for t in conv.turns:
            t["stopped"] = "cleared"
        conv.turns.clear()  # in place: nothing that still holds the list can bring the turns back
        await self.sessions.cancel(request.session_hash or "", why)

    async def unload(self, request: gr.Request) -> None:
        """The page was closed or reloaded: whatever it was waiting for must not hold a GPU,
        and the idle policy no longer waits for this asker's next question."""
        await self.sessions.cancel(request.session_hash or "", "the page was closed")
        if request.session_hash:
            await self.gw.gone(f"ui:{request.session_hash}")

    def _busy(self, conv: Conversation, request: gr.Request) -> bool:
        return any(status_of(t) in RUNNING for t in conv.turns) or (request.session_hash or "") in self.runs

    async def warm(
        self, value: dict | None, conv: Conversation, mode: str, task: str, warmed: str, request: gr.Request
    ) -> str:
        """Warm-up on intent: an attached file says a question is coming, so boot its tier now."""
        files = list((value or {}).get("files") or [])
        tiers = self.gw.cfg.tiers
        if not files or not any(t.warm_on_intent for t in tiers.values()):
            return warmed
        key = "|".join([*files, mode or "", task or ""])
        if key == warmed:
            return warmed
        text = (value or {}).get("text") or ""
        history = history_of(conv.turns)
        try:
            body = await asyncio.to_thread(lambda: chat_body(build_messages(history, text, files), mode, task))
            req = await asyncio.to_thread(self.gw.prepare, body)
        except Exception:  # noqa: BLE001 - a bad file is reported when it is sent, not here
            return key
        asker = f"ui:{request.session_hash}" if request.session_hash else ""
        if await self.gw.warm(req, "warm on intent: a user attached a file", asker):
            log.info("warm on intent: starting tier %s", req.tier)
        return key
