"""A stand-in for the upstream Qwen3-VL web demo (`web_demo_mm.py`), without a model.

It behaves like the real demo as a Gradio client sees it, quirks included, so the Gradio
backend's tests meet what production meets:

* the API: `/add_file (history, file)`, `/add_text (history, text)`, `/predict (chatbot)`
  streamed, `/regenerate (chatbot)`, `/reset_state (chatbot)`, `/reset_user_input ()`, with
  the conversation the model reads kept in a per-session `gr.State` (`task_history`);
* how the model's messages are built from `task_history` (files first, each text closing
  a user turn), so an image-only turn fails the way upstream's does (an IndexError the
  client only sees as "has not enabled verbose error reporting": upstream launches without
  `show_error`);
* answers in upstream's HTML (`_parse_text`: `<br>` line joins with empty lines dropped,
  fences as `<pre><code class="language-X">`, entities inside code, text outside code
  unescaped; then `<box>`/`<ref>` removed), re-rendered whole at every streamed word;
* the upload button's file check on a host without /etc/mime.types: only names whose
  type Python's built-in mimetypes table knows are images or videos (.webp and .mkv are
  refused with Gradio 5's "Invalid file type" error).

Upstream's history is a Gradio 5 `Chatbot` in the "tuples" format, which Gradio 6 no longer
has, so here it is a `gr.JSON` carrying the same wire value: a list of `[user, bot]` pairs
whose entries are strings, `null` or `{"file": FileData, "alt_text": null}`.

The fake model describes the media it was given (image sizes, how many videos) and then
repeats the last text verbatim, so whatever a test writes comes back through the HTML.

    python -m tests.standin_gradio_demo --port 7861
"""

from __future__ import annotations

import argparse
import copy
import mimetypes
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
from gradio.utils import NamedString
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".wmv", ".flv", ".webm", ".mpeg")  # upstream's _is_video_file
FILE_TYPES = ["image", "video"]  # upstream's UploadButton(file_types=...)
BUILTIN_TYPES = mimetypes.MimeTypes(filenames=())  # what a host without /etc/mime.types knows
Pair = list  # [user, bot]: str | tuple[str] (a file) | None each, as upstream's handlers see them

_IN_CODE = (  # upstream's escapes inside code, in its order (the backtick first)
    ("`", "\\`"), ("<", "&lt;"), (">", "&gt;"), (" ", "&nbsp;"), ("*", "&ast;"), ("_", "&lowbar;"), ("-", "&#45;"),
    (".", "&#46;"), ("!", "&#33;"), ("(", "&#40;"), (")", "&#41;"), ("$", "&#36;"),
)


def parse_text(text: str) -> str:
    """Upstream's `_parse_text`, rule for rule (see the module docstring)."""
    lines = [line for line in str(text).split("\n") if line != ""]
    fences = 0
    out: list[str] = []
    for i, line in enumerate(lines):
        if "```" in line:
            fences += 1
            out.append(f'<pre><code class="language-{line.split("`")[-1]}">' if fences % 2 else "<br></code></pre>")
            continue
        if i > 0:
            if fences % 2:
                for char, entity in _IN_CODE:
                    line = line.replace(char, entity)
            line = "<br>" + line
        out.append(line)
    return "".join(out)


def remove_image_special(text: str) -> str:
    """Upstream's `_remove_image_special`: grounding tags out of the shown answer."""
    return re.sub(r"<box>.*?(</box>|$)", "", text.replace("<ref>", "").replace("</ref>", ""))


def _from_wire(history: list | None) -> list[Pair]:
    """What Gradio 5's tuples Chatbot hands a handler: file entries become `(path,)`."""
    return [[(m["file"]["path"],) if isinstance(m, dict) else m for m in pair] for pair in history or []]


def _to_wire(history: list[Pair]) -> list[list]:
    """What Gradio 5's tuples Chatbot sends back: `(path,)` becomes a FileMessage dict."""
    def entry(m: object) -> object:
        if isinstance(m, tuple | list):
            path = str(m[0])
            file = {"path": path, "orig_name": os.path.basename(path), "meta": {"_type": "gradio.FileData"}}
            return {"file": file, "alt_text": None}
        return m
    return [[entry(m) for m in pair] for pair in history]


def _messages(task_history: list[Pair]) -> list[dict]:
    """Upstream's conversion: files join the next text's user turn; the last (unanswered) answer is dropped."""
    messages: list[dict] = []
    content: list[dict] = []
    for query, answer in copy.deepcopy(task_history):
        if isinstance(query, tuple | list):
            is_video = str(query[0]).lower().endswith(VIDEO_SUFFIXES)
            content.append({"video": os.path.abspath(query[0])} if is_video else {"image": os.path.abspath(query[0])})
        else:
            content.append({"text": query})
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": [{"text": answer}]})
            content = []
    messages.pop()  # IndexError for a conversation with no text, exactly as upstream
    return messages


def _model(messages: list[dict]) -> str:
    """The fake model: what it was shown, then the last text, verbatim."""
    sizes, videos, texts = [], 0, []
    for message in messages:
        if message["role"] != "user":
            continue
        for item in message["content"]:
            if "image" in item:
                with Image.open(item["image"]) as im:  # by content, as the real model's loader does
                    sizes.append(f"{im.width}x{im.height}")
            elif "video" in item:
                videos += 1
            else:
                texts.append(item["text"])
    seen = f"I see {len(sizes)} image(s) {' '.join(sizes)}".rstrip()
    if videos:
        seen += f" and {videos} video(s)"
    return f"[stand-in web demo] {seen}; turn {len(texts)};\nyou said: {texts[-1]}"


def add_text(history: list | None, task_history: list[Pair], text: str) -> tuple[list, list[Pair]]:
    return _to_wire(_from_wire(history) + [[parse_text(text), None]]), task_history + [[text, None]]


def add_file(history: list | None, task_history: list[Pair], file: NamedString) -> tuple[list, list[Pair]]:
    kind = BUILTIN_TYPES.guess_type(Path(file.name).name)[0] or ""
    if kind.split("/")[0] not in FILE_TYPES:  # Gradio 5's UploadButton check, with only the built-in table
        raise gr.Error(f"Invalid file type. Please upload a file that is one of these formats: {FILE_TYPES}")
    return _to_wire(_from_wire(history) + [[(file.name,), None]]), task_history + [[(file.name,), None]]


def predict(chatbot: list | None, task_history: list[Pair]) -> Iterator[list]:
    pairs = _from_wire(chatbot)
    chat_query = pairs[-1][0]
    query = task_history[-1][0]
    if len(chat_query) == 0:
        pairs.pop()
        task_history.pop()
        return
    words = _model(_messages(task_history)).split(" ")
    full = ""
    for n in range(1, len(words) + 1):
        time.sleep(0.005)
        response = " ".join(words[:n])
        pairs[-1] = [parse_text(chat_query), remove_image_special(parse_text(response))]
        yield _to_wire(pairs)
        full = parse_text(response)
    task_history[-1] = [query, full]  # in place, as upstream does (its State is not an output)
    yield _to_wire(pairs)


def regenerate(chatbot: list | None, task_history: list[Pair]) -> Iterator[list]:
    if not task_history or task_history[-1][1] is None:
        yield chatbot or []
        return
    task_history[-1] = [task_history[-1][0], None]
    yield from predict(chatbot, task_history)


def reset_state(chatbot: list | None, task_history: list[Pair]) -> list:
    task_history.clear()  # in place: upstream does not return the State either
    return []


def reset_user_input() -> str:
    return ""


def build() -> gr.Blocks:
    with gr.Blocks(title="Qwen3-VL (stand-in)") as demo:
        chatbot = gr.JSON(value=[], label="Qwen3-VL")
        query = gr.Textbox(lines=2, label="Input")
        task_history = gr.State([])
        addfile_btn = gr.UploadButton("Upload", file_types=FILE_TYPES)
        submit_btn = gr.Button("Submit")
        regen_btn = gr.Button("Regenerate")
        empty_bin = gr.Button("Clear History")

        submit_btn.click(add_text, [chatbot, task_history, query], [chatbot, task_history], api_name="add_text").then(
            predict, [chatbot, task_history], [chatbot], api_name="predict"
        )
        submit_btn.click(reset_user_input, [], [query], api_name="reset_user_input")
        empty_bin.click(reset_state, [chatbot, task_history], [chatbot], api_name="reset_state")
        regen_btn.click(regenerate, [chatbot, task_history], [chatbot], api_name="regenerate")
        addfile_btn.upload(add_file, [chatbot, task_history, addfile_btn], [chatbot, task_history], api_name="add_file")
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    # Upstream launches without show_error: errors other than gr.Error reach clients as a generic message.
    build().queue().launch(server_name=args.host, server_port=args.port, quiet=True)


if __name__ == "__main__":
    main()
