"""A stand-in for the upstream Qwen3-VL web demo (`web_demo_mm.py`), without a model.

It exposes the demo's API as the Gradio client sees it: `/add_file (history, file)`,
`/add_text (history, text)`, `/predict (chatbot)` streamed, `/regenerate (chatbot)`,
`/reset_state (chatbot)` and `/reset_user_input ()`, with the conversation the model reads
kept in a per-session `gr.State` exactly as upstream. Upstream's history is a Gradio 5
`Chatbot` in the "tuples" format, which Gradio 6 no longer has, so here it is a `gr.JSON`
carrying the same wire value: a list of `[user, bot]` pairs whose entries are strings,
`null` or `{"file": FileData, "alt_text": null}`. The answer is deterministic, streamed word
by word and HTML-ified like upstream's `_parse_text` (lines joined by `<br>`).

    python -m tests.standin_gradio_demo --port 7861
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator

import gradio as gr
from gradio.utils import NamedString
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".wmv", ".flv", ".webm", ".mpeg")
Pair = list  # [user, bot]: str | tuple[str] (a file) | None each, as upstream's handlers see them


def _from_wire(history: list | None) -> list[Pair]:
    """What Gradio 5's tuples Chatbot hands a handler: file entries become `(path,)`."""
    return [[(m["file"]["path"],) if isinstance(m, dict) else m for m in pair] for pair in history or []]


def _to_wire(history: list[Pair]) -> list[list]:
    """What Gradio 5's tuples Chatbot sends back: `(path,)` becomes a FileMessage dict."""
    def entry(m: object) -> object:
        if isinstance(m, (tuple, list)):
            path = str(m[0])
            file = {"path": path, "orig_name": os.path.basename(path), "meta": {"_type": "gradio.FileData"}}
            return {"file": file, "alt_text": None}
        return m
    return [[entry(m) for m in pair] for pair in history]


def _html(text: str) -> str:
    """Upstream shows answers as HTML: empty lines dropped, the rest joined by `<br>`."""
    return "<br>".join(line for line in text.split("\n") if line)


def _answer(task_history: list[Pair]) -> str:
    """The fake model: describes the media it was given and echoes the last text."""
    sizes, videos, texts = [], 0, []
    for query, _ in task_history:
        if isinstance(query, (tuple, list)):
            if query[0].lower().endswith(VIDEO_SUFFIXES):
                videos += 1
            else:
                with Image.open(query[0]) as im:
                    sizes.append(f"{im.width}x{im.height}")
        else:
            texts.append(query)
    seen = f"I see {len(sizes)} image(s) {' '.join(sizes)}".rstrip()
    if videos:
        seen += f" and {videos} video(s)"
    return f"[stand-in web demo] {seen}; turn {len(texts)};\nyou said: {texts[-1]}"


def add_text(history: list | None, task_history: list[Pair], text: str) -> tuple[list, list[Pair]]:
    return _to_wire(_from_wire(history) + [[_html(text), None]]), task_history + [[text, None]]


def add_file(history: list | None, task_history: list[Pair], file: NamedString) -> tuple[list, list[Pair]]:
    return _to_wire(_from_wire(history) + [[(file.name,), None]]), task_history + [[(file.name,), None]]


def predict(chatbot: list | None, task_history: list[Pair]) -> Iterator[list]:
    pairs = _from_wire(chatbot)
    if not pairs or not pairs[-1][0]:
        raise gr.Error("nothing to answer: call /add_text first")
    words = _answer(task_history).split(" ")
    for n in range(1, len(words) + 1):
        time.sleep(0.005)
        pairs[-1] = [pairs[-1][0], _html(" ".join(words[:n]))]
        yield _to_wire(pairs)
    task_history[-1] = [task_history[-1][0], " ".join(words)]  # in place, as upstream does


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
        addfile_btn = gr.UploadButton("Upload", file_types=["image", "video"])
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
    build().queue().launch(server_name=args.host, server_port=args.port, show_error=True, quiet=True)


if __name__ == "__main__":
    main()
