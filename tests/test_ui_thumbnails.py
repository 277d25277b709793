"""Presenter thumbnails: a video answer shows its video (first frame, play mark), not the text placeholder."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from router.cache import Entry, thumbnail


def _mp4(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for _ in range(5):
            frame = np.zeros((120, 160, 3), np.uint8)
            frame[:, :] = color
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _image(data_url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")


def test_a_video_question_is_stored_with_its_first_frame() -> None:
    url = "data:video/mp4;base64," + base64.b64encode(_mp4((200, 20, 20))).decode()
    thumb = thumbnail([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                    {"type": "text", "text": "what happens?"}]}])
    img = _image(thumb)
    r, g, b = img.getpixel((5, 5))
    assert img.size == (160, 120) and r > 150 and g < 80 and b < 80  # the video's red, not a placeholder
    broken = "data:video/mp4;base64," + base64.b64encode(b"not a video").decode()
    assert thumbnail([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": broken}}]}]) == ""


def test_the_presenter_marks_video_answers(tmp_path: Path) -> None:
    from ui.presenter import PresenterTab

    tab = PresenterTab.__new__(PresenterTab)  # only the thumbnail helpers: no gateway needed
    tab.dir = tmp_path
    tab.placeholder, tab.video_placeholder = tab._placeholder("text"), tab._placeholder("video")
    frame = thumbnail([{"role": "user", "content": [{"type": "video_url", "video_url": {
        "url": "data:video/mp4;base64," + base64.b64encode(_mp4((20, 20, 200))).decode()}}]}])

    def entry(key: str, task: str, thumb: str) -> Entry:
        return Entry(key=key, response={}, tier="t", task=task, model="m", question="q", created=time.time(),
                     thumbnail=thumb)

    with_frame = tab._thumb(entry("a" * 64, "video", frame))
    without = tab._thumb(entry("b" * 64, "long_video", ""))
    text_only = tab._thumb(entry("c" * 64, "caption", ""))
    assert without == tab.video_placeholder and text_only == tab.placeholder and with_frame not in (without, text_only)
    marked = Image.open(with_frame).convert("RGB")
    assert marked.getpixel((3, 3))[2] > 150  # the frame's blue at the edge
    centre = marked.getpixel((marked.width // 2 + 2, marked.height // 2))
    assert min(centre) > 200  # the white play mark in the middle
    # keys are names from a demo set: two keys that share a prefix (or hold `..`) still get files of their own
    one = tab._thumb(entry("0" * 63 + "1", "caption", frame))
    two = tab._thumb(entry("0" * 63 + "2", "caption", thumbnail([{"role": "user", "content": [{"type": "video_url",
        "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(_mp4((20, 200, 20))).decode()}}]}])))
    sneaky = tab._thumb(entry("../../escape", "caption", frame))
    assert one != two and Path(sneaky).parent == tmp_path
