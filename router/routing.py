"""Which task a request is, and which tier serves that task in the chosen mode.

The rules are a table a reader can follow: the first that matches wins. A video decides
first (its length picks `long_video`), then the wording of the last user message (and,
for GUI agents, the system prompt), in English and Chinese.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import BadRequest
from .media import ParsedMessages

TASKS: tuple[str, ...] = ("caption", "ocr", "document", "grounding", "html", "gui_agent", "video", "long_video")
MODES: tuple[str, ...] = ("speed", "balanced", "quality")

# (task, pattern, what matched) in priority order; English words use word boundaries so
# "thread" is not "read" and "decode" is not "code".
RULES: tuple[tuple[str, str], ...] = (
    ("gui_agent", (r"<tools>|mobile_use|computer_use|\b(click|tap|swipe|long[- ]press|scroll (up|down))\b"
                   r"|点击|滑动|长按|打开应用|轻触")),
    ("document", r"qwenvl (html|markdown)"),
    ("html", (r"\b(html|css|web ?page|website|front[- ]?end|code|python|javascript|matplotlib|plot)\b"
              r"|网页|代码|前端|画图|编程")),
    ("grounding", (r"\b(bbox(es)?|bounding box(es)?|locate|localize|detect|point to|grounding|coordinates?)\b"
                   r"|定位|检测|框出|坐标|标出")),
    ("ocr", (r"\b(ocr|read|extract|transcribe|text in (the|this) (image|picture|photo))\b"
             r"|识别|提取|文字|读取|转录")),
)
_COMPILED = tuple((task, re.compile(pattern, re.IGNORECASE)) for task, pattern in RULES)


def explain(parsed: ParsedMessages, long_video_seconds: float = 300.0) -> tuple[str, str]:
    """The task, and the reason a user can read (shown in the UI and the logs)."""
    videos = [a for a in parsed.attachments if a.kind == "video"]
    if videos:
        longest = max((v.duration_s for v in videos if v.duration_s is not None), default=None)
        if longest is not None and longest > long_video_seconds:
            return "long_video", f"video attachment {longest:.0f} s long (> {long_video_seconds:.0f} s)"
        if longest is None:
            return "video", "video attachment (length unknown)"
        return "video", f"video attachment {longest:.0f} s long"
    for task, rx in _COMPILED:
        text = parsed.system + "\n" + parsed.last_user if task == "gui_agent" else parsed.last_user
        m = rx.search(text)
        if m:
            return task, f"wording {m.group(0)!r}"
    return "caption", "no other rule matched"


def classify(parsed: ParsedMessages, long_video_seconds: float = 300.0) -> str:
    return explain(parsed, long_video_seconds)[0]


def pick_tier(tasks: Mapping[str, Mapping[str, str]], task: str, mode: str) -> str:
    """The tier for task x mode; a task the table leaves out is served like `caption`."""
    if mode not in MODES:
        raise BadRequest(f"unknown mode {mode!r}; use one of {', '.join(MODES)}", param="tiergate.mode")
    row = tasks.get(task) or tasks.get("caption") or next(iter(tasks.values()))
    return row[mode]
