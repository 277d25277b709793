"""Validate the messages of a chat request and fingerprint its images and videos.

Everything wrong with a request must be found here, before a GPU is started for it, and
named precisely ("messages[0].content[1]: image is 25.3 MiB, over the 20 MiB limit"). The
cache key needs each attachment's content hash, not its base64 text, so the same picture
sent twice hits the cache however it was encoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass
from typing import Any, Literal

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp")
VIDEO_TYPES = ("video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/avi", "video/x-msvideo")
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class MediaLimits:
    max_image_bytes: int = 20 * 1024 * 1024
    max_video_bytes: int = 200 * 1024 * 1024
    max_attachments: int = 16


@dataclass(frozen=True)
class Attachment:
    kind: Literal["image", "video"]
    sha256: str  # of the decoded bytes for data: URLs; of the URL for http(s) URLs
    size: int | None
    mime: str | None
    url: str | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class ParsedMessages:
    canonical: list[dict]  # media replaced by {"sha256": ...}: stable input for the cache key
    attachments: list[Attachment]
    last_user: str  # the text of the last user message, for routing
    system: str  # system prompts, for the GUI-agent rule

    @property
    def text(self) -> str:
        return self.last_user


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def parse_messages(messages: Any, limits: MediaLimits) -> ParsedMessages:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list of chat messages", param="messages", code="invalid_messages")
    canonical: list[dict] = []
    attachments: list[Attachment] = []
    last_user = ""
    system: list[str] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise BadRequest(f"{where} must be an object with `role` and `content`", param=where)
        role = msg.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role {role!r} is not one of {', '.join(ROLES)}", param=f"{where}.role")
        content = msg.get("content")
        if content is None and role in ("assistant", "tool"):
            canonical.append({k: v for k, v in msg.items()})
            continue
        text, parts = _content(content, where, limits, attachments)
        if role == "user" and not text.strip() and not parts:
            raise BadRequest(f"{where} is empty: a user message needs text or an attachment", param=f"{where}.content")
        if role == "user":
            last_user = text
        if role in ("system", "developer"):
            system.append(text)
        canonical.append({**msg, "content": parts if isinstance(content, list) else content})
    if not last_user and not any(m.get("role") == "user" for m in messages):
        raise BadRequest("the conversation has no user message", param="messages", code="invalid_messages")
    return ParsedMessages(canonical, attachments, last_user, "\n".join(system))


def _content(content: Any, where: str, limits: MediaLimits, attachments: list[Attachment]) -> tuple[str, list]:
    """Text of a message and its canonical parts; appends its attachments."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    texts: list[str] = []
    parts: list = []
    for j, part in enumerate(content):
        pw = f"{where}.content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest(f"{pw} must be an object with a `type`", param=pw)
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise BadRequest(f"{pw}.text must be a string", param=pw)
            texts.append(part["text"])
            parts.append(part)
            continue
        media = {"image_url": "image", "image": "image", "video_url": "video", "video": "video"}.get(kind)
        if media is None:
            raise BadRequest(f"{pw}: unsupported content type {kind!r} (use text, image_url or video_url)", param=pw)
        url = _url_of(part, kind, pw)
        if len(attachments) >= limits.max_attachments:
            raise BadRequest(
                f"{pw}: too many attachments (at most {limits.max_attachments} per request)", param=pw,
                code="too_many_attachments",
            )
        att = _attachment(media, url, pw, limits)
        attachments.append(att)
        parts.append({"type": f"{media}_url", f"{media}_url": {"sha256": att.sha256}})
    return "\n".join(texts), parts


def _url_of(part: dict, kind: str, pw: str) -> str:
    value = part.get(kind)
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{pw}: {kind} needs a URL (a data: URL or http(s) URL)", param=pw)
    return url


def _attachment(kind: Literal["image", "video"], url: str, pw: str, limits: MediaLimits) -> Attachment:
    if url.startswith(("http://", "https://")):
        return Attachment(kind, hashlib.sha256(url.encode()).hexdigest(), None, None, url=url)
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "a bare path"
        raise BadRequest(f"{pw}: unsupported URL scheme {scheme!r}; send a data: URL or an http(s) URL", param=pw)
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise BadRequest(f"{pw}: a data: URL must be base64 (data:<type>;base64,<data>)", param=pw, code="invalid_base64")
    mime = header[: -len(";base64")].lower()
    allowed = IMAGE_TYPES if kind == "image" else VIDEO_TYPES
    if mime not in allowed:
        raise UnsupportedMediaType(f"{pw}: {kind} type {mime!r} is not supported (use {', '.join(allowed)})", param=pw)
    limit = limits.max_image_bytes if kind == "image" else limits.max_video_bytes
    if len(payload) * 3 // 4 > limit + 3:  # reject before decoding a huge body
        raise PayloadTooLarge(f"{pw}: {kind} is about {_mib(len(payload) * 3 // 4)}, over the {_mib(limit)} limit", param=pw)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{pw}: base64 data is not valid", param=pw, code="invalid_base64") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"{pw}: {kind} is {_mib(len(data))}, over the {_mib(limit)} limit", param=pw)
    digest = hashlib.sha256(data).hexdigest()
    if kind == "image":
        width, height = _image_size(data, pw)
        return Attachment("image", digest, len(data), mime, width=width, height=height)
    return Attachment("video", digest, len(data), mime, duration_s=video_duration(data))


def _image_size(data: bytes, pw: str) -> tuple[int, int]:
    """Read the header only (no full decode); a file Pillow cannot identify is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadRequest(f"{pw}: the image data is corrupt or not an image", param=pw, code="invalid_image") from None


def video_duration(data: bytes) -> float | None:
    """Seconds, from the container (PyAV); None when it cannot be read."""
    try:
        import av

        with av.open(io.BytesIO(data)) as container:
            if container.duration:
                return container.duration / av.time_base
            for stream in container.streams.video:
                if stream.duration and stream.time_base:
                    return float(stream.duration * stream.time_base)
    except Exception:  # noqa: BLE001 - an unreadable video is routed as `video`, not refused
        return None
    return None
