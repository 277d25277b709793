"""The one walk over OpenAI chat messages, shared by everything that reads them.

Media validation (router/media.py), the stand-in worker (worker/) and the Gradio backend's
flattening all need the same facts from `messages`: each turn's role, its text and its
image/video parts in order. Walking them in one place keeps the three from disagreeing
about what a request says (which part types exist, string vs `{"url"}` values, where a
tool-call turn has no content), and gives every refusal the same precise location
("messages[2].content[1].image_url: needs a URL ...").

It only looks at structure: nothing is decoded here, so it costs a walk over a few dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import BadRequest

Kind = Literal["image", "video"]

# "developer" is OpenAI's newer name for "system"; it is treated as a system prompt.
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")
SYSTEM_ROLES: tuple[str, ...] = ("system", "developer")
# part type -> attachment kind; the URL sits under the key named like the type
MEDIA_PARTS: dict[str, Kind] = {"image_url": "image", "image": "image", "video_url": "video", "video": "video"}
PART_TYPES = "text, image_url, video_url, image or video"


@dataclass(frozen=True)
class Media:
    """One image or video part, where it sits, and its URL (a data: URL or an http(s) URL)."""

    kind: Kind
    url: str
    field: str  # the part's key holding the URL: image_url, image, video_url or video
    where: str  # "messages[0].content[1].image_url", for error messages
    msg: int
    idx: int


@dataclass(frozen=True)
class Turn:
    """One message: its role, its texts and media in the order they came."""

    index: int
    role: str
    texts: tuple[str, ...]
    media: tuple[Media, ...]
    parts: bool  # content was a list of parts (False: a string, or no content at all)

    @property
    def where(self) -> str:
        return f"messages[{self.index}]"

    @property
    def text(self) -> str:
        return "\n".join(self.texts)


def walk(messages: object) -> list[Turn]:
    """Every turn of `messages`, or BadRequest naming the first thing that is not a chat message."""
    if not isinstance(messages, list):
        raise BadRequest("`messages` must be a non-empty list of chat messages", param="messages", code="invalid_messages")
    if not messages:
        raise BadRequest("`messages` is empty: send at least one message", param="messages", code="invalid_messages")
    return [_turn(i, msg) for i, msg in enumerate(messages)]


def _turn(i: int, msg: object) -> Turn:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise BadRequest(f"{where} must be an object with `role` and `content`, got {json_type(msg)}", param=where)
    role = msg.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise BadRequest(f"{where}.role {short(role)} is not one of {', '.join(ROLES)}", param=f"{where}.role")
    content = msg.get("content")
    if content is None and role == "assistant":  # a tool-call turn
        return Turn(i, role, (), (), parts=False)
    if isinstance(content, str):
        return Turn(i, role, (content,), (), parts=False)
    if not isinstance(content, list):
        raise BadRequest(
            f"{where}.content must be a string or a list of parts, got {json_type(content)}", param=f"{where}.content"
        )
    texts: list[str] = []
    media: list[Media] = []
    for j, part in enumerate(content):
        pw = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise BadRequest(f"{pw} must be an object with a string `type` ({PART_TYPES})", param=pw)
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise BadRequest(f"{pw}.text must be a string", param=f"{pw}.text")
            texts.append(part["text"])
            continue
        media_kind = MEDIA_PARTS.get(kind)
        if media_kind is None:
            raise BadRequest(f"{pw}: unsupported part type {kind!r} (use {PART_TYPES})", param=pw)
        fw = f"{pw}.{kind}"
        value = part.get(kind)
        url = value.get("url") if isinstance(value, dict) else value
        if not isinstance(url, str) or not url:
            raise BadRequest(f"{fw}: needs a URL (a data: URL or an http(s) URL)", param=fw)
        media.append(Media(media_kind, url, kind, fw, i, j))
    return Turn(i, role, tuple(texts), tuple(media), parts=True)


def short(value: object, limit: int = 40) -> str:
    """A value as a client wrote it, cut short: error messages must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value: object) -> str:
    """Name a JSON value's type the way a client thinks of it."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )
