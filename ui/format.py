"""Words and small HTML for what the gateway did, shared by every tab.

Kept free of Gradio so the texts a user reads (progress, meta, errors) can be checked in
isolation and stay the same in the chat bubble, the API meta and the presenter.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

from router.errors import BadRequest, QueueFull, TiergateError, TierTimeout, TierUnavailable, UpstreamError
from router.gateway import Meta, Progress

STAGE_WORDS = {
    "queued": "queued",
    "starting machine": "starting the GPU machine",
    "loading model": "loading the model",
    "ready": "ready",
    "fallback": "switching to the fallback tier",
    "waiting for the previous stop": "waiting for the previous stop to finish",
    "retrying": "retrying the start",
}


# What the routing calls a task, in words a chat user knows (English, then Chinese).
TASK_WORDS = {
    "caption": "Describe 描述",
    "ocr": "Read text (OCR) 文字识别",
    "document": "Document 文档解析",
    "grounding": "Find objects 目标定位",
    "html": "HTML / code 网页代码",
    "gui_agent": "GUI agent 界面操作",
    "video": "Video 视频理解",
    "long_video": "Long video 长视频",
}


def task_words(task: str) -> str:
    return TASK_WORDS.get(task, task)


def seconds(value: float | None) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`; `-` for unknown."""
    if value is None:
        return "-"
    s = max(0, round(value))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def money(value: float) -> str:
    """Currency-neutral (prices in tiers.toml are in any currency); small amounts keep precision."""
    if value == 0:
        return "0"
    if abs(value) < 0.01:
        return f"{value:.5f}"
    return f"{value:.2f}"


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def date(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def progress_text(p: Progress, gpu: str, elapsed: float, eta: float | None) -> str:
    """The bot bubble while a tier boots: a cold start is normal, so it explains rather than alarms."""
    if p.stage == "fallback":
        return f"↪️ {p.message or 'switching to the fallback tier'} …\n\n等待备用算力层启动中"
    stage = STAGE_WORDS.get(p.stage, p.stage)
    parts = [f"{seconds(elapsed)} elapsed"]
    if eta is not None:
        parts.append(f"about {seconds(eta)} left" if eta > 0.5 else "almost there")
    if p.position > 0:  # 1-based
        parts.append(f"{ordinal(p.position)} in the queue")
    return (
        f"⏳ **Starting the {p.tier} tier ({gpu})**: {stage}\n\n"
        f"{' · '.join(parts)}\n\n"
        "The GPU machine was stopped to save money; your answer will stream here as soon as it is ready. "
        "(GPU 冷启动中，请稍候)"
    )


def meta_line(meta: Meta, *, regenerate: bool = False) -> str:
    """One line under an answer in the chat: which tier, cache, wait, cost."""
    parts = [f"{meta.tier} · {meta.gpu}" if meta.gpu else meta.tier, task_words(meta.task)]
    if meta.cache == "hit":
        parts.append("⚡ from cache (no GPU)")
    elif regenerate:
        parts.append("regenerated (cache bypassed)")
    if meta.wait_ms >= 500:
        parts.append(f"waited {seconds(meta.wait_ms / 1000)} for the GPU")
    if meta.cache != "hit":
        parts.append(f"cost {money(meta.cost)}")
    if meta.fallback_reason:
        parts.append(f"↪️ fallback: {meta.requested_tier or 'the routed tier'} could not start")
    return " · ".join(parts)


def meta_html(meta: Meta, *, regenerate: bool = False) -> str:
    """The `answer-meta` panel: the same facts as `meta_line`, with badges and the fallback reason."""
    cache = {
        "hit": ("tg-badge tg-hit", "⚡ cache hit · no GPU used · 来自缓存"),
        "miss": ("tg-badge tg-miss", "cache miss · answered by the GPU"),
        "bypass": ("tg-badge tg-miss", "cache bypassed" + (" (regenerate)" if regenerate else "")),
    }[meta.cache if meta.cache in ("hit", "miss", "bypass") else "miss"]
    waited = (
        f"waited <b>{seconds(meta.wait_ms / 1000)}</b> for the GPU to start"
        if meta.wait_ms >= 500 else "no wait (the GPU was already running)" if meta.cache != "hit" else "no wait"
    )
    cost = "nothing (served from cache)" if meta.cache == "hit" else f"<b>{money(meta.cost)}</b> ({meta.seconds:.1f} s of GPU)"
    badges = (
        f'<span class="tg-badge tg-tier">{esc(meta.tier)} · {esc(meta.gpu)}</span>'
        f'<span class="tg-badge">task: {esc(task_words(meta.task))}</span>'
        f'<span class="{cache[0]}">{cache[1]}</span>'
    )
    rows = [badges, f"<span>{waited} · cost {cost}</span>"]
    if meta.fallback_reason:
        rows.append(f'<span class="tg-warn">↪️ {esc(meta.fallback_reason)}</span>')
    return '<div class="tg-meta">' + "<br>".join(rows) + "</div>"


def replay_html(tier: str, gpu: str, task: str, created: float) -> str:
    return (
        '<div class="tg-meta">'
        f'<span class="tg-badge tg-tier">{esc(tier)} · {esc(gpu)}</span>'
        f'<span class="tg-badge">task: {esc(task_words(task))}</span>'
        '<span class="tg-badge tg-hit">▶ replayed from cache · no GPU used</span><br>'
        f"<span>originally answered {date(created)}</span></div>"
    )


def streaming_html(tier: str, gpu: str) -> str:
    """`answer-meta` while the answer streams: the GPU is up and answering, no longer a wait."""
    return ('<div class="tg-meta">'
            f'<span class="tg-badge tg-tier">{esc(tier)} · {esc(gpu)}</span>'
            '<span class="tg-badge">✍️ answering… 正在回答</span></div>')


_API_PATH = re.compile(r"messages\[(\d+)\]\.content(\[\d+\])?(?:\.[A-Za-z_]+)?")


def in_user_words(message: str, labels: dict[str, str]) -> str:
    """`messages[0].content[1].image_url: image is 25 MiB` -> `photo.png: image is 25 MiB`.

    The chat builds the API request itself, so a path into it means nothing to its user;
    `labels` (from `engine.build_messages`) says which file or question each part was.
    """

    def name(m: re.Match) -> str:
        msg = f"messages[{m.group(1)}].content"
        if m.group(2):
            return labels.get(msg + m.group(2), "an attachment")
        return labels.get(msg, "your question")

    return _API_PATH.sub(name, message)


def error_text(exc: BaseException, labels: dict[str, str] | None = None) -> str:
    """What went wrong and what happens next, for the bubble (never a stack trace, never an API path)."""
    if isinstance(exc, BadRequest):
        return (f"⚠️ This message could not be sent (消息未发送): {in_user_words(exc.message, labels or {})}\n\n"
                "Fix it and send again; nothing was started or charged. 请修改后重新发送，未启动任何 GPU，也未计费。")
    if isinstance(exc, QueueFull):
        after = exc.headers.get("Retry-After", "")
        return (f"⏸ The tier is busy: {exc.message}. Please try again{f' in about {after} s' if after else ' shortly'}. "
                "该算力层繁忙，请稍后重试。")
    if isinstance(exc, TierTimeout):
        return (f"⌛ {exc.message}.\n\nThe machine is stopped again so it does not keep billing. Press **Regenerate (重试)** "
                "to try again. GPU 启动超时，已关机以免继续计费。")
    if isinstance(exc, TierUnavailable):
        return (
            f"❌ {exc.message}.\n\nNo fallback tier could take over. Try again later, or pick another mode "
            "(e.g. Speed) to use a different GPU. 算力层无法启动，请稍后重试或换一种模式。"
        )
    if isinstance(exc, UpstreamError):
        return (f"❌ The GPU worker failed while answering: {exc.message}. Press **Regenerate (重试)** to try again. "
                "GPU 回答时出错，请重试。")
    if isinstance(exc, TiergateError):
        return f"❌ {exc.message}"
    return f"❌ Internal error ({type(exc).__name__}); the gateway logged it. Please try again. 内部错误，请重试。"


def stop_note(stage: str, tier: str, gpu: str, others: int, idle_s: float | None) -> str:
    """What Stop did, and what the GPU does next: only what is true at that stage.

    `others` is how many other requests wait for the tier, counted while this one still
    waited; when there are none the engine cancels a boot that requests started.
    """
    idle = f" after {seconds(idle_s)} idle" if idle_s else " once idle"
    what = f"the {tier} tier" + (f" ({gpu})" if gpu else "")
    if stage == "waiting":
        if others <= 0:
            return (f"⏹ Stopped before the GPU was ready. Nobody else was waiting for {what}, so its start is "
                    "cancelled and nothing more is billed. 已停止：没有其他人在等待，GPU 启动已取消，不再计费。")
        return (f"⏹ Stopped before the GPU was ready. {others} other request(s) are waiting for {what}, so it keeps "
                f"booting for them and stops by itself{idle}. 已停止：还有其他请求在等待，GPU 继续启动，空闲后自动关机。")
    if stage == "answering":
        return (f"⏹ Stopped. The GPU is released for this answer; {what} stops by itself{idle}. "
                "已停止：本次回答已释放 GPU，空闲后自动关机。")
    return "⏹ Stopped before anything was started; nothing was billed. 已停止：未启动 GPU，未计费。"


def meta_dict(meta: Meta) -> dict:
    """The meta a script gets from `/chat`, with the same field names as the HTTP headers."""
    return {
        "tier": meta.tier, "gpu": meta.gpu, "task": meta.task, "cache": meta.cache, "wait_ms": meta.wait_ms,
        "seconds": round(meta.seconds, 3), "cost": round(meta.cost, 6), "fallback_reason": meta.fallback_reason,
    }


def esc(text: object) -> str:
    return html.escape(str(text))
