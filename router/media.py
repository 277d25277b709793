"""Validate the messages of a chat request and fingerprint its images and videos.

Everything wrong with a request must be found here, before a GPU is started for it, and
named precisely ("messages[0].content[1].image_url: image is 25.3 MiB, over the 20 MiB
limit"). The cache key needs each attachment's content hash, not its base64 text, so the
same picture sent twice hits the cache however its data: URL was written.

Cost matters: a text-only request is a walk over a few dicts, an image costs one base64
decode, one SHA-256 and a Pillow header read (never a full decode), and an oversized
payload is refused from its base64 length before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .messages import SYSTEM_ROLES, Kind, Media, Turn, walk

# image/jpg and video/x-msvideo are not registered types but clients send them.
IMAGE_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp")
VIDEO_TYPES: tuple[str, ...] = (
    "video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/avi", "video/x-msvideo",
)
# Pillow only tries these decoders, whatever the declared type says (less attack surface,
# faster refusal of garbage); a phone's JPEG opens as MPO through the JPEG plugin.
_PILLOW_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}:")
_MAX_DATA_HEADER = 256  # "data:<mime>;<params>;base64," is short; don't scan a 200 MB URL for its comma


@dataclass(frozen=True)
class MediaLimits:
    max_image_bytes: int = 20 * 1024 * 1024
    max_video_bytes: int = 200 * 1024 * 1024
    max_attachments: int = 16


@dataclass(frozen=True)
class Attachment:
    kind: Kind
    sha256: str  # of the decoded bytes for data: URLs; of the URL string for http(s) URLs
    size: int | None  # decoded byte size (None for URLs: they are not fetched)
    mime: str | None  # declared in the data: URL (None for URLs)
    url: str | None  # set for http(s) URLs
    width: int | None = None  # images, from the header
    height: int | None = None
    duration_s: float | None = None  # videos; None when the container cannot be read


@dataclass(frozen=True)
class ParsedMessages:
    canonical: list[dict]  # messages with each data: URL replaced by {"sha256": ...}: the cache key's input
    attachments: list[Attachment]
    text: str  # all user and system text, joined
    last_user: str | None = None  # text of the last user message (routing); None: use `text`
    system: str = ""  # system prompts (the GUI-agent routing rule looks here too)
    turns: list[Turn] = field(default_factory=list)  # the walk, for whoever needs the turns again (backends)


def parse_messages(messages: object, limits: MediaLimits) -> ParsedMessages:
    """Check `messages` and fingerprint its media; raise BadRequest (or 413/415) naming the culprit.

    Two passes: the structure and the attachment count are checked first (`messages.walk`),
    so a malformed or overfull request is refused before any base64 is decoded.
    """
    turns = walk(messages)
    assert isinstance(messages, list)  # walk() refused anything else
    canonical: list[dict] = []
    texts: list[str] = []
    system: list[str] = []
    last_user = ""
    for turn in turns:
        msg = messages[turn.index]
        # media parts are swapped for their hashes below, in a copy of the content list
        canonical.append({**msg, "content": list(msg["content"])} if turn.parts else dict(msg))
        text = turn.text
        if turn.role == "user":
            if not turn.media and not text.strip():
                raise BadRequest(
                    f"{turn.where}.content is empty: a user message needs text or an attachment",
                    param=f"{turn.where}.content",
                )
            last_user = text
            texts.append(text)
        elif turn.role in SYSTEM_ROLES:
            system.append(text)
            texts.append(text)
    media = [m for turn in turns for m in turn.media]
    if len(media) > limits.max_attachments:
        first_extra = media[limits.max_attachments]
        raise BadRequest(
            f"{first_extra.where}: too many attachments: the request has {len(media)}, "
            f"at most {limits.max_attachments} are allowed",
            param=first_extra.where, code="too_many_attachments",
        )
    attachments = [_attach(m, messages[m.msg]["content"][m.idx], canonical, limits) for m in media]
    return ParsedMessages(canonical, attachments, "\n".join(texts), last_user, "\n".join(system), turns)


def _attach(m: Media, part: dict, canonical: list[dict], limits: MediaLimits) -> Attachment:
    """Validate one media part and put its fingerprint in place of its URL in `canonical`."""
    att = _attachment(m.kind, m.url, m.where, limits)
    value = part[m.field]
    if att.url is not None:
        ref: Any = value  # an http(s) URL is its own fingerprint
    elif isinstance(value, dict):
        ref = {k: v for k, v in value.items() if k != "url"} | {"sha256": att.sha256}  # keeps e.g. "detail"
    else:
        ref = {"sha256": att.sha256}
    if m.field in ("image_url", "video_url") and isinstance(ref, str):
        ref = {"url": ref}  # the string shorthand means the same as the object form
    canonical[m.msg]["content"][m.idx] = {**part, m.field: ref}
    return att


def _attachment(kind: Kind, url: str, where: str, limits: MediaLimits) -> Attachment:
    head = url[:8].lower()
    if head.startswith(("http://", "https://")):
        return Attachment(kind, hashlib.sha256(url.encode()).hexdigest(), None, None, url)
    if not head.startswith("data:"):
        scheme = _SCHEME.match(url)
        what = f"unsupported URL scheme {scheme.group(0)[:-1]!r}" if scheme else "unsupported URL scheme (no scheme: a bare path?)"
        raise BadRequest(f"{where}: {what}; send a data: URL or an http(s) URL", param=where, code="unsupported_url")
    comma = url.find(",", 5, _MAX_DATA_HEADER)
    params = url[5:comma].split(";") if comma > 0 else []
    if len(params) < 2 or params[-1].strip().lower() != "base64":
        raise BadRequest(
            f"{where}: a data: URL must be base64-encoded (data:<type>;base64,<data>)", param=where, code="invalid_base64"
        )
    mime = params[0].strip().lower()
    allowed = IMAGE_TYPES if kind == "image" else VIDEO_TYPES
    if mime not in allowed:
        raise UnsupportedMediaType(
            f"{where}: {kind} type {mime or '(none)'!r} is not supported (use {', '.join(allowed)})", param=where
        )
    limit = limits.max_image_bytes if kind == "image" else limits.max_video_bytes
    estimate = (len(url) - comma - 1) * 3 // 4
    if estimate - 2 > limit:  # refuse from the base64 length alone: no 500 MB decode (padding is at most 2)
        raise PayloadTooLarge(f"{where}: {kind} is {_size(estimate)}, over the {_size(limit)} limit", param=where)
    try:
        data = base64.b64decode(url[comma + 1 :], validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raise BadRequest(f"{where}: base64 data is not valid", param=where, code="invalid_base64") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"{where}: {kind} is {_size(len(data))}, over the {_size(limit)} limit", param=where)
    digest = hashlib.sha256(data).hexdigest()
    if kind == "image":
        width, height = _image_size(data, where)
        return Attachment("image", digest, len(data), mime, None, width=width, height=height)
    return Attachment("video", digest, len(data), mime, None, duration_s=video_duration(data))


def _image_size(data: bytes, where: str) -> tuple[int, int]:
    """Width and height from the header; `verify()` checks the structure without decoding pixels."""
    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as img:
            size = img.size
            img.verify()
            return size
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{where}: image has too many pixels ({exc})", param=where, code="image_too_large") from None
    except Exception:  # noqa: BLE001 - Pillow raises many kinds of errors on hostile input; all mean "not an image"
        raise BadRequest(
            f"{where}: image data is corrupt or not a PNG, JPEG, WebP, GIF or BMP image", param=where, code="invalid_image"
        ) from None


def video_duration(data: bytes) -> float | None:
    """Seconds, from the container header (PyAV); None when it cannot be read.

    An unreadable video is not refused: the model server may still cope, and routing
    treats an unknown length as a short `video`.
    """
    try:
        import av  # imported here: heavy, and only video requests need it

        with av.open(io.BytesIO(data)) as container:
            if container.duration:
                return container.duration / av.time_base
            for stream in container.streams.video:
                if stream.duration and stream.time_base:
                    return float(stream.duration * stream.time_base)
    except Exception:  # noqa: BLE001 - any demuxer failure just means "length unknown"
        return None
    return None


def _size(n: int) -> str:
    """Human size for messages: "25.3 MiB", "20 MiB", "12 KiB", "900 bytes"."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"

