"""The presenter tab: browse cached answers, pin them, replay one instantly, carry a demo set.

A replay puts the question and its stored answer into the chat without touching a GPU,
so a demo never waits for a cold start. Importing a demo set needs admin login: imported
answers are pinned and served to every user whose request has the same key.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from router.gateway import Entry, Gateway

from . import format as fmt
from .chat import ChatTab, render
from .session import admin_user

SHOWN = 120  # the gallery shows the newest entries matching the search
NOTHING_SELECTED = "*Select an answer above to preview, pin or replay it.*"
# The chat tab was hidden while the replay was added, so the chatbot did not follow it down.
SCROLL_CHAT_JS = """() => { setTimeout(() => { const w = document.querySelector('#chatbot .bubble-wrap');
  if (w) w.scrollTop = w.scrollHeight; }, 300); }"""


class PresenterTab:
    def __init__(self, gateway: Gateway, chat: ChatTab, session: gr.State) -> None:
        self.gw = gateway
        self.chat = chat
        self.session = session
        self.dir = Path(tempfile.mkdtemp(prefix="tiergate-presenter-"))  # thumbnails and exports Gradio serves
        atexit.register(shutil.rmtree, self.dir, ignore_errors=True)
        self.placeholder = self._placeholder()

    def build(self) -> None:
        gr.Markdown("Cached answers replay instantly with no GPU. Pin the ones for your demo: pinned answers never "
                    "expire. 缓存的回答可立即回放，无需 GPU。")
        with gr.Row():
            self.query = gr.Textbox(placeholder="Search questions and answers… 搜索", show_label=False, scale=4,
                                    elem_id="presenter-search")
            self.refresh_btn = gr.Button("🔄 Refresh", scale=1, elem_id="presenter-refresh")
        self.keys = gr.State([])
        self.selected = gr.State("")
        self.gallery = gr.Gallery(label="Cached answers", show_label=False, columns=6, height=360, allow_preview=False,
                                  fit_columns=False, object_fit="cover", elem_id="presenter-gallery")
        self.preview = gr.Markdown(NOTHING_SELECTED, elem_id="presenter-preview")
        with gr.Row():
            self.pin_btn = gr.Button("📌 Pin / Unpin", elem_id="presenter-pin")
            self.replay_btn = gr.Button("▶ Replay in chat (回放)", variant="primary", elem_id="presenter-replay")
        with gr.Accordion("Demo set: export / import", open=False):
            with gr.Row():
                self.export_pinned_btn = gr.Button("⬇ Export pinned", elem_id="presenter-export-pinned")
                self.export_all_btn = gr.Button("⬇ Export all shown", elem_id="presenter-export-all")
            with gr.Row():
                self.export_file = gr.File(label="Exported demo set", interactive=False, elem_id="presenter-export")
                self.import_file = gr.File(label="Import a demo set (admin login needed)", type="binary",
                                           elem_id="presenter-import")
        self.message = gr.Markdown("", elem_id="presenter-message")

    def wire(self, tabs: gr.Tabs) -> None:
        private: dict[str, Any] = {"api_visibility": "private"}
        listing = self.listing = [self.gallery, self.keys, self.message, self.selected, self.preview]
        gr.on([self.query.submit, self.refresh_btn.click], self.list, [self.query], listing, **private)
        self.gallery.select(self.select, [self.keys], [self.selected, self.preview], **private)
        self.pin_btn.click(self.toggle_pin, [self.selected, self.query], listing, **private)
        c = self.chat
        self.replay_btn.click(self.replay, [self.selected, c.turns], [c.chatbot, c.turns, c.meta, tabs, self.message],
                              **private).then(None, js=SCROLL_CHAT_JS, **private)
        self.export_pinned_btn.click(self.export_pinned, None, [self.export_file, self.message], **private)
        self.export_all_btn.click(self.export_shown, [self.keys], [self.export_file, self.message], **private)
        self.import_file.upload(self.import_set, [self.import_file, self.session, self.query],
                                [*listing, self.import_file], **private)

    # --- handlers -------------------------------------------------------------------------

    async def list(self, query: str, note: str = "", keep: str = "") -> tuple:
        """The gallery (pinned first), its keys, a message, and the selection: `keep` stays selected."""
        entries = (await self.gw.cached(query or ""))[:SHOWN]
        entries.sort(key=lambda e: (not e.pinned, -e.created))
        items = await asyncio.to_thread(lambda: [(self._thumb(e), self._caption(e)) for e in entries])
        msg = note or (f"{len(entries)} cached answer(s)" + (f" matching “{query}”" if query else "")
                       if entries else "No cached answers yet: ask something in the chat first.")
        keys = [e.key for e in entries]
        if keep in keys:
            kept = entries[keys.index(keep)]
            return gr.Gallery(value=items, selected_index=keys.index(keep)), keys, msg, keep, self._preview(kept)
        return gr.Gallery(value=items, selected_index=None), keys, msg, "", NOTHING_SELECTED

    async def select(self, keys: list[str], evt: gr.SelectData) -> tuple:
        key = keys[evt.index] if isinstance(evt.index, int) and evt.index < len(keys) else ""
        entry = await self.gw.cached_entry(key)
        if entry is None:
            return "", "*That answer is no longer in the cache; press Refresh.*"
        return key, self._preview(entry)

    async def toggle_pin(self, key: str, query: str) -> tuple:
        entry = await self.gw.cached_entry(key)
        if entry is None:
            return await self.list(query, "Select an answer first.")
        await self.gw.pin(key, not entry.pinned)
        note = "Unpinned: it expires with the cache TTL again." if entry.pinned else "📌 Pinned: it will not expire."
        return await self.list(query, note, keep=key)

    async def replay(self, key: str, turns: list[dict]) -> tuple:
        entry = await self.gw.cached_entry(key)
        if entry is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), "Select an answer first."
        files = [await asyncio.to_thread(self._thumb, entry)] if entry.thumbnail else []
        tier = self.gw.cfg.tiers.get(entry.tier)
        gpu = tier.gpu if tier else ""
        turn = {"text": entry.question, "files": files, "answer": entry.text, "status": "replayed", "note": "",
                "footer": f"▶ replayed from cache · {entry.tier} · {entry.task} · no GPU", "cache": True}
        turns = [*turns, turn]
        meta = fmt.replay_html(entry.tier, gpu, entry.task, entry.created)
        return render(turns), turns, meta, gr.Tabs(selected="tab-chat"), "▶ Replayed in the chat."

    async def export_pinned(self) -> tuple:
        keys = [e.key for e in await self.gw.cached("") if e.pinned]
        if not keys:
            return None, "Nothing is pinned yet: pin the answers for your demo first."
        return await self._export(keys)

    async def export_shown(self, keys: list[str]) -> tuple:
        if not keys:
            return None, "Nothing to export: the list is empty."
        return await self._export(keys)

    async def _export(self, keys: list[str]) -> tuple:
        data = await self.gw.export(keys)
        path = self.dir / f"tiergate-demo-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        await asyncio.to_thread(path.write_bytes, data)
        return str(path), f"⬇ Exported {len(keys)} answer(s) to one file; import it on another gateway."

    async def import_set(self, data: bytes | None, session: Any, query: str, request: gr.Request) -> tuple:
        if not data:
            return (*await self.list(query), None)
        if not admin_user(session, request):
            return (*await self.list(query, "🔒 Importing needs admin login (Admin tab): imported answers are "
                                            "served to every user."), None)
        try:
            n = await self.gw.import_set(data)
        except ValueError as exc:
            return (*await self.list(query, f"⚠️ Not imported: {exc}"), None)
        return (*await self.list(query, f"✅ Imported {n} answer(s), pinned."), None)

    # --- helpers --------------------------------------------------------------------------

    def _caption(self, e: Entry) -> str:
        q = " ".join(e.question.split())
        q = q if len(q) <= 48 else q[:45] + "…"
        return f"{'📌 ' if e.pinned else ''}{q or '(no text)'} · {e.tier} · {time.strftime('%m-%d', time.gmtime(e.created))}"

    def _preview(self, e: Entry) -> str:
        answer = e.text if len(e.text) <= 1500 else e.text[:1500] + " …"
        return (f"**{'📌 pinned · ' if e.pinned else ''}{fmt.esc(e.tier)} · {fmt.esc(e.task)} · {fmt.date(e.created)}**\n\n"
                f"**Q:** {fmt.esc(e.question) or '(no text)'}\n\n**A:** {answer}")

    def _thumb(self, e: Entry) -> str:
        """The entry's thumbnail as a file Gradio can serve (it lives under the temp dir)."""
        if not e.thumbnail or ";base64," not in e.thumbnail:
            return self.placeholder
        path = self.dir / f"{e.key[:32]}.jpg"
        if not path.exists():
            try:
                path.write_bytes(base64.b64decode(e.thumbnail.split(",", 1)[1]))
            except (ValueError, OSError):
                return self.placeholder
        return str(path)

    def _placeholder(self) -> str:
        path = self.dir / "text-only.png"
        img = Image.new("RGB", (160, 160), (236, 239, 244))
        draw = ImageDraw.Draw(img)
        draw.rounded_rectangle((30, 45, 130, 115), radius=14, outline=(120, 130, 150), width=4)
        draw.text((58, 72), "text", fill=(90, 100, 120))
        img.save(path)
        return str(path)
