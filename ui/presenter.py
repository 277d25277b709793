"""The presenter tab: replay answers instantly, and (with a login) browse, pin and carry them as demo sets.

A replay puts the question and its stored answer into the chat without touching a GPU,
so a demo never waits for a cold start.

Who sees what, checked on the server in every handler (a raw queue call with no login gets
nothing more than the page shows): without a login, only pinned answers (what an admin
chose to show) are listed, previewed and replayed. Browsing, searching and exporting
everyone's cached answers needs a presenter or admin login, unless `[presenter] public =
true` opens them on purpose. Pinning and importing need an admin: pinned and imported
answers never expire and are served to every user whose request has the same key.

Exports never pass through Gradio (it would copy the file into its cache, readable by
anyone on the host, and serve it to anyone with the URL): they are written 0600 into a
private folder and served once from a random link, then deleted (`Exports`).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import hashlib
import io
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from router.gateway import Entry, Gateway

from . import format as fmt
from .chat import RUNNING, ChatTab, Conversation, render, status_of
from .engine import allow_dir
from .session import admin_user, can_browse

SHOWN = 120  # the gallery shows the newest entries matching the search
EXPORT_TTL = 600.0  # seconds an export waits for its one download
VIDEO_TASKS = ("video", "long_video")
NOTHING_SELECTED = "*Select an answer above to preview, pin or replay it. 选择上方的回答进行预览、置顶或回放。*"
NEEDS_LOGIN = ("Log in as a presenter or admin (Admin tab) to browse, search and export every cached answer. "
               "登录（管理标签页）后可浏览全部缓存回答。")
# The chat tab was hidden while the replay was added, so the chatbot did not follow it down.
SCROLL_CHAT_JS = """() => { setTimeout(() => { const w = document.querySelector('#chatbot .bubble-wrap');
  if (w) w.scrollTop = w.scrollHeight; }, 300); }"""
# Gradio lays captions over the bottom of square thumbnails, and a fixed-height gallery cut
# its second row just above them. Here each item is a 4:3 picture with its caption under
# it, so two full rows (captions included) fit the box and further rows scroll.
CSS = """
#presenter-gallery .grid-container { grid-template-rows: none; grid-auto-rows: auto; }
#presenter-gallery .gallery-item { height: auto; }
#presenter-gallery .thumbnail-item { aspect-ratio: auto; height: auto; display: flex; flex-direction: column; }
#presenter-gallery .thumbnail-item > img { aspect-ratio: 4 / 3; height: auto; width: 100%; }
#presenter-gallery .caption-label { position: static; display: block; max-width: 100%; border: 0; border-radius: 0;
  opacity: 1; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
"""


class Exports:
    """Demo-set files that can be downloaded once each: 0600 in a 0700 folder, removed after the download."""

    def __init__(self, ttl: float = EXPORT_TTL) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tiergate-exports-"))  # mkdtemp makes it 0700
        self.ttl = ttl
        self._files: dict[str, tuple[Path, str, float]] = {}  # token -> (path, download name, expires)
        self._lock = threading.Lock()
        atexit.register(shutil.rmtree, self.dir, ignore_errors=True)

    def add(self, data: bytes, name: str) -> str:
        """Write `data` privately; returns the token of its one download."""
        self.sweep()
        token = secrets.token_urlsafe(24)
        path = self.dir / f"{token}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        with self._lock:
            self._files[token] = (path, name, time.monotonic() + self.ttl)
        return token

    def take(self, token: str) -> tuple[bytes, str] | None:
        """The file's bytes and download name, once: the file is gone afterwards."""
        with self._lock:
            found = self._files.pop(token, None)
        if found is None:
            return None
        path, name, expires = found
        try:
            data = path.read_bytes() if time.monotonic() < expires else None
        finally:
            path.unlink(missing_ok=True)
        return (data, name) if data is not None else None

    def sweep(self) -> None:
        """Remove the exports nobody downloaded in time."""
        now = time.monotonic()
        with self._lock:
            old = [t for t, (_, _, expires) in self._files.items() if expires <= now]
            paths = [self._files.pop(t)[0] for t in old]
        for p in paths:
            p.unlink(missing_ok=True)


class PresenterTab:
    def __init__(self, gateway: Gateway, chat: ChatTab, session: gr.State, exports: Exports) -> None:
        self.gw = gateway
        self.chat = chat
        self.session = session
        self.exports = exports
        self.dir = Path(tempfile.mkdtemp(prefix="tiergate-presenter-"))  # thumbnails Gradio serves
        atexit.register(shutil.rmtree, self.dir, ignore_errors=True)
        allow_dir(self.dir)  # a replayed answer's thumbnail goes along with a follow-up question
        self.placeholder = self._placeholder("text")
        self.video_placeholder = self._placeholder("video")

    def build(self) -> None:
        gr.Markdown("Cached answers replay instantly with no GPU. Pinned answers never expire and are shown to "
                    "everyone; log in to browse every cached answer. 缓存的回答可立即回放，无需 GPU。")
        with gr.Row():
            self.query = gr.Textbox(placeholder="Search questions and answers… 搜索", show_label=False, scale=4,
                                    elem_id="presenter-search")
            self.refresh_btn = gr.Button("🔄 Refresh 刷新", scale=1, elem_id="presenter-refresh")
        self.keys = gr.State([])
        self.selected = gr.State("")
        self.gallery = gr.Gallery(label="Cached answers", show_label=False, columns=6, height=420, allow_preview=False,
                                  fit_columns=False, object_fit="cover", elem_id="presenter-gallery")
        self.preview = gr.Markdown(NOTHING_SELECTED, elem_id="presenter-preview")
        with gr.Row():
            self.pin_btn = gr.Button("📌 Pin / Unpin (admin)", elem_id="presenter-pin")
            self.replay_btn = gr.Button("▶ Replay in chat (回放)", variant="primary", elem_id="presenter-replay")
        with gr.Accordion("Demo set: export / import 演示集：导出 / 导入", open=False):
            with gr.Row():
                self.export_pinned_btn = gr.Button("⬇ Export pinned", elem_id="presenter-export-pinned")
                self.export_all_btn = gr.Button("⬇ Export all shown", elem_id="presenter-export-all")
            with gr.Row():
                self.export_link = gr.HTML("", elem_id="presenter-export")
                self.import_file = gr.File(label="Import a demo set (admin login needed)", type="binary",
                                           elem_id="presenter-import")
        self.message = gr.Markdown("", elem_id="presenter-message")

    def wire(self, tabs: gr.Tabs, tab: gr.Tab) -> None:
        private: dict[str, Any] = {"api_visibility": "private"}
        s = self.session
        listing = self.listing = [self.gallery, self.keys, self.message, self.selected, self.preview]
        gr.on([self.query.submit, self.refresh_btn.click, tab.select], self.list, [self.query, s], listing,
              api_name="presenter_list", **private)
        self.gallery.select(self.select, [self.keys, s], [self.selected, self.preview], api_name="presenter_select",
                            **private)
        self.pin_btn.click(self.toggle_pin, [self.selected, self.query, s], listing, api_name="presenter_pin",
                           **private)
        c = self.chat
        self.replay_btn.click(self.replay, [self.selected, c.conv, s], [c.chatbot, c.meta, tabs, self.message],
                              api_name="presenter_replay", **private).then(None, js=SCROLL_CHAT_JS,
                                                                            api_name="presenter_scroll_chat", **private)
        self.export_pinned_btn.click(self.export_pinned, [s], [self.export_link, self.message],
                                     api_name="presenter_export_pinned", **private)
        self.export_all_btn.click(self.export_shown, [self.keys, s], [self.export_link, self.message],
                                  api_name="presenter_export_shown", **private)
        self.import_file.upload(self.import_set, [self.import_file, s, self.query], [*listing, self.import_file],
                                api_name="presenter_import", **private)

    # --- handlers -------------------------------------------------------------------------

    async def _visible(self, query: str, browse: bool) -> list[Entry]:
        entries = await self.gw.cached(query or "")
        if not browse:
            entries = [e for e in entries if e.pinned]  # what an admin chose to show, nothing else
        return entries[:SHOWN]

    async def list(self, query: str, session: Any, request: gr.Request, note: str = "", keep: str = "") -> tuple:
        """The gallery (pinned first), its keys, a message, and the selection: `keep` stays selected."""
        browse = can_browse(self.gw.cfg, session, request)
        entries = await self._visible(query, browse)
        entries.sort(key=lambda e: (not e.pinned, -e.created))
        items = await asyncio.to_thread(lambda: [(self._thumb(e), self._caption(e)) for e in entries])
        what = "cached answer(s)" if browse else "pinned demo answer(s)"
        if entries:
            msg = f"{len(entries)} {what}" + (f" matching “{fmt.esc(query)}”" if query else "")
        elif browse:
            msg = "No cached answers yet: ask something in the chat first." if not query else f"Nothing matches “{fmt.esc(query)}”."
        else:
            msg = "No pinned demo answers" + (f" match “{fmt.esc(query)}”" if query else " yet") + "."
        msg = note or (msg if browse else f"{msg} {NEEDS_LOGIN}")
        keys = [e.key for e in entries]
        if keep in keys:
            kept = entries[keys.index(keep)]
            return gr.Gallery(value=items, selected_index=keys.index(keep)), keys, msg, keep, self._preview(kept)
        return gr.Gallery(value=items, selected_index=None), keys, msg, "", NOTHING_SELECTED

    async def _entry(self, key: str, session: Any, request: gr.Request) -> Entry | None:
        """The entry if this session may see it: pinned ones for everyone, the rest with a login."""
        entry = await self.gw.cached_entry(key)
        if entry is None or not (entry.pinned or can_browse(self.gw.cfg, session, request)):
            return None
        return entry

    async def select(self, keys: list[str], session: Any, evt: gr.SelectData, request: gr.Request) -> tuple:
        key = keys[evt.index] if isinstance(evt.index, int) and 0 <= evt.index < len(keys) else ""
        entry = await self._entry(key, session, request)
        if entry is None:
            return "", "*That answer is no longer available; press Refresh. 该回答已不可用，请刷新。*"
        return key, self._preview(entry)

    async def toggle_pin(self, key: str, query: str, session: Any, request: gr.Request) -> tuple:
        if not admin_user(self.gw.cfg, session, request):
            return await self.list(query, session, request, "🔒 Pinning needs an admin login (Admin tab): pinned "
                                                             "answers are shown to everyone. 置顶需要管理员登录。", keep=key)
        entry = await self.gw.cached_entry(key)
        if entry is None:
            return await self.list(query, session, request, "Select an answer first. 请先选择一个回答。")
        await self.gw.pin(key, not entry.pinned)
        note = "Unpinned: it expires with the cache TTL again." if entry.pinned else "📌 Pinned: it will not expire."
        return await self.list(query, session, request, note, keep=key)

    async def replay(self, key: str, conv: Conversation, session: Any, request: gr.Request) -> tuple:
        entry = await self._entry(key, session, request)
        if entry is None:
            return gr.skip(), gr.skip(), gr.skip(), "Select an answer first. 请先选择一个回答。"
        if any(status_of(t) in RUNNING for t in conv.turns):
            return gr.skip(), gr.skip(), gr.skip(), "An answer is still running in the chat: wait for it or press Stop."
        files = [await asyncio.to_thread(self._thumb, entry)] if entry.thumbnail else []
        tier = self.gw.cfg.tiers.get(entry.tier)
        gpu = tier.gpu if tier else ""
        conv.turns.append({
            "text": entry.question, "files": files, "answer": entry.text, "status": "replayed", "note": "",
            "footer": f"▶ replayed from cache · {entry.tier} · {fmt.task_words(entry.task)} · no GPU", "cache": True,
        })
        meta = fmt.replay_html(entry.tier, gpu, entry.task, entry.created)
        return render(conv.turns), meta, gr.Tabs(selected="tab-chat"), "▶ Replayed in the chat. 已在对话中回放。"

    async def export_pinned(self, session: Any, request: gr.Request) -> tuple:
        if not can_browse(self.gw.cfg, session, request):
            return "", f"🔒 {NEEDS_LOGIN}"
        keys = [e.key for e in await self.gw.cached("") if e.pinned]
        if not keys:
            return "", "Nothing is pinned yet: pin the answers for your demo first."
        return await self._export(keys)

    async def export_shown(self, keys: list[str], session: Any, request: gr.Request) -> tuple:
        if not can_browse(self.gw.cfg, session, request):
            return "", f"🔒 {NEEDS_LOGIN}"
        if not keys:
            return "", "Nothing to export: the list is empty."
        return await self._export(keys)

    async def _export(self, keys: list[str]) -> tuple:
        data = await self.gw.export(keys)
        name = f"tiergate-demo-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        token = await asyncio.to_thread(self.exports.add, data, name)
        minutes = round(self.exports.ttl / 60)
        link = (f'<a href="ui/export/{token}" download="{name}" id="presenter-export-link">⬇ {fmt.esc(name)}</a> '
                f"<small>({len(keys)} answer(s); one download, within {minutes} min · 仅可下载一次)</small>")
        return link, f"⬇ Exported {len(keys)} answer(s): download the file once; import it on another gateway."

    async def import_set(self, data: bytes | None, session: Any, query: str, request: gr.Request) -> tuple:
        if not data:
            return (*await self.list(query, session, request), None)
        if not admin_user(self.gw.cfg, session, request):
            return (*await self.list(query, session, request, "🔒 Importing needs admin login (Admin tab): imported "
                                                             "answers are served to every user."), None)
        try:
            n = await self.gw.import_set(data)
        except ValueError as exc:
            return (*await self.list(query, session, request, f"⚠️ Not imported: {fmt.esc(exc)}"), None)
        return (*await self.list(query, session, request, f"✅ Imported {n} answer(s), pinned."), None)

    # --- helpers --------------------------------------------------------------------------

    def _caption(self, e: Entry) -> str:
        q = " ".join(e.question.split())
        q = q if len(q) <= 48 else q[:45] + "…"
        kind = "video · " if e.task in VIDEO_TASKS else ""
        return f"{'📌 ' if e.pinned else ''}{kind}{q or '(no text)'} · {e.tier} · {time.strftime('%m-%d', time.gmtime(e.created))}"

    def _preview(self, e: Entry) -> str:
        answer = e.text if len(e.text) <= 1500 else e.text[:1500] + " …"
        return (f"**{'📌 pinned · ' if e.pinned else ''}{fmt.esc(e.tier)} · {fmt.esc(fmt.task_words(e.task))} · "
                f"{fmt.date(e.created)}**\n\n**Q:** {fmt.esc(e.question) or '(no text)'}\n\n**A:** {answer}")

    def _thumb(self, e: Entry) -> str:
        """The entry's thumbnail as a file Gradio can serve (it lives under our own folder).

        A video answer shows its first frame with a play mark, or a film placeholder when the
        entry has no frame; a text-only answer shows the text placeholder.
        """
        video = e.task in VIDEO_TASKS
        if not e.thumbnail or ";base64," not in e.thumbnail:
            return self.video_placeholder if video else self.placeholder
        # named by a hash: an imported demo set's keys are whatever its author wrote (even `../`)
        name = hashlib.sha256(f"{e.key}|{e.thumbnail}".encode()).hexdigest()[:40]
        path = self.dir / f"{name}{'-v' if video else ''}.jpg"
        if not path.exists():
            try:
                img = Image.open(io.BytesIO(base64.b64decode(e.thumbnail.split(",", 1)[1]))).convert("RGB")
                if video:
                    _play_mark(img)
                img.save(path, "JPEG", quality=85)
            except (ValueError, OSError):
                return self.video_placeholder if video else self.placeholder
        return str(path)

    def _placeholder(self, kind: str) -> str:
        path = self.dir / f"{kind}-only.png"
        img = Image.new("RGB", (160, 160), (236, 239, 244))
        draw = ImageDraw.Draw(img)
        if kind == "video":
            draw.rounded_rectangle((22, 40, 138, 120), radius=10, outline=(120, 130, 150), width=4)
            for x in range(30, 135, 18):  # the film's sprocket holes
                draw.rectangle((x, 46, x + 8, 52), fill=(120, 130, 150))
                draw.rectangle((x, 108, x + 8, 114), fill=(120, 130, 150))
            _play_mark(img)
        else:
            draw.rounded_rectangle((30, 45, 130, 115), radius=14, outline=(120, 130, 150), width=4)
            draw.text((58, 72), "text", fill=(90, 100, 120))
        img.save(path)
        return str(path)


def _play_mark(img: Image.Image) -> None:
    """A ▶ in a dark disc in the middle: this answer is about a video."""
    w, h = img.size
    r = max(10, min(w, h) // 6)
    cx, cy = w // 2, h // 2
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(0, 0, 0, 150))
    draw.polygon([(cx - r // 3, cy - r // 2), (cx - r // 3, cy + r // 2), (cx + r // 2, cy)], fill=(255, 255, 255, 230))
    img.paste(Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB"))
