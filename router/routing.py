"""Which task a request is, and which tier serves that task in the chosen mode.

The rules are meant to be read, and predicted, by a person writing a prompt:

1. a video attachment anywhere in the conversation is `video`, or `long_video` when it
   lasts longer than `long_video_seconds` (an unreadable length counts as `video`);
2. then the first row of `RULES` whose pattern is found in the last user message wins
   (the `gui_agent` rows also look at the system prompt, where agent frameworks put
   their tool list);
3. otherwise `caption`.

Patterns are case-insensitive, in English and Chinese. English words are matched whole
(ASCII word boundaries, so "thread" is not "read", "decode" is not "code", and "用HTML写"
still finds "HTML" next to Chinese characters).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import BadRequest, TierUnavailable
from .media import ParsedMessages

TASKS: tuple[str, ...] = ("caption", "ocr", "document", "grounding", "html", "gui_agent", "video", "long_video")
MODES: tuple[str, ...] = ("speed", "balanced", "quality")

# (task, pattern, reason) in priority order: the first match wins.
RULES: tuple[tuple[str, str, str], ...] = (
    ("gui_agent", r"<tools>|\bmobile_use\b|\bcomputer_use\b", "GUI-agent system prompt"),
    ("gui_agent", (
        r"\b(click(s|ed|ing)?|double[- ]click|tap(s|ped|ping)?|swipe[sd]?|swiping|long[- ]?press(es|ed|ing)?)\b"
        r"|点击|单击|双击|轻触|点按|滑动|长按|打开应用"
    ), "asks for a GUI action"),
    ("document", (
        r"\bqwen ?vl[ _-]?(html|markdown)\b|\b(document parsing|layout analysis)\b"
        r"|文档解析|版面分析"
    ), "asks for document parsing"),
    ("html", (
        r"\b(html|css|web ?pages?|websites?|front[- ]?end|(?<!qr )(?<!qr-)(?<!bar )code|coding|python|javascript"
        r"|matplotlib|plot(s|ted|ting)?)\b"
        r"|网页|网站|前端|代码|编程|绘图|画图"
    ), "asks for code or a web page"),
    ("grounding", (
        r"\b(bbox(es)?|bounding[- ]box(es)?|locate|locali[sz]e|detect(s|ion)?|point to|grounding|coordinates?)\b"
        r"|定位|检测|框出|标出|圈出|坐标|边界框"
    ), "asks where things are"),
    ("ocr", (
        r"\b(ocr|read(ing)?|extract|transcribe|transcription"
        r"|text (in|on|from) (the|this) (image|picture|photo|screenshot|page|document))\b"
        r"|识别|提取|文字|读取|读出|转写|抄写"
    ), "asks to read text"),
)
_COMPILED: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (task, re.compile(pattern, re.IGNORECASE | re.ASCII), reason) for task, pattern, reason in RULES
)


def explain(parsed: ParsedMessages, long_video_seconds: float = 300.0) -> tuple[str, str]:
    """The task, and why, in words a user can check (shown in the UI and the logs)."""
    videos = [a for a in parsed.attachments if a.kind == "video"]
    if videos:
        longest = max((v.duration_s for v in videos if v.duration_s is not None), default=None)
        if longest is None:
            return "video", "video attachment of unknown length"
        if longest > long_video_seconds:
            return "long_video", f"video attachment {_secs(longest)} s long (> {_secs(long_video_seconds)} s)"
        return "video", f"video attachment {_secs(longest)} s long (<= {_secs(long_video_seconds)} s)"
    user = parsed.text if parsed.last_user is None else parsed.last_user
    with_system = f"{parsed.system}\n{user}" if parsed.system else user
    for task, rx, reason in _COMPILED:
        m = rx.search(with_system if task == "gui_agent" else user)
        if m:
            return task, f"wording {m.group(0)!r} ({reason})"
    return "caption", "no rule matched (a plain description)"


def classify(parsed: ParsedMessages, long_video_seconds: float = 300.0) -> str:
    """The task alone; see `explain`."""
    return explain(parsed, long_video_seconds)[0]


def pick_tier(tasks: Mapping[str, Mapping[str, str]], task: str, mode: str) -> str:
    """The tier for task x mode; a task the table (or TASKS) does not know is served like `caption`."""
    if mode not in MODES:
        raise BadRequest(f"unknown mode {mode!r}; use one of {', '.join(MODES)}", param="tiergate.mode")
    for name in (task, "caption") if task in TASKS else ("caption",):
        tier = (tasks.get(name) or {}).get(mode)
        if tier:
            return tier
    raise TierUnavailable(
        f"no tier serves task {task!r} in mode {mode!r}: add routing.tasks.{task}.{mode} or routing.tasks.caption.{mode}"
    )


def _secs(x: float) -> str:
    """412.0 -> "412", 300.4 -> "300.4"."""
    return f"{x:.1f}".removesuffix(".0")
