"""What the worker makes of a conversation, and the deterministic reply it composes.

The messages are read with the gateway's own walker (router/messages.py), so the worker
accepts and refuses exactly the shapes the gateway does. Media are described from their
headers only (Pillow reads lazily; PyAV reads the container), so this stays cheap.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from router.messages import Media, Turn

QUOTE_MAX_CHARS = 60

# Word lists for the fingerprint sentence (16/16/8/8 entries, indexed by hash bytes).
# fmt: off
_ADJECTIVES = (
    "amber", "quiet", "distant", "silver", "patient", "crooked", "bright", "hollow",
    "gentle", "narrow", "restless", "ancient", "velvet", "frosty", "golden", "humble",
)
_NOUNS = (
    "lighthouse", "orchard", "river", "lantern", "meadow", "compass", "harbor", "violin",
    "glacier", "library", "windmill", "garden", "bridge", "comet", "forest", "teapot",
)
_VERBS = ("hums", "waits", "drifts", "glows", "listens", "wanders", "rests", "sings")
_ADVERBS = ("softly", "calmly", "slowly", "brightly", "idly", "warmly", "lazily", "steadily")
# fmt: on


@dataclass
class Conversation:
    """What the worker learned from the messages; enough to write the answer."""

    question: str
    n_messages: int
    n_user: int
    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    fingerprint: str = ""


def _parse_data_url(url: str) -> tuple[str, bytes] | None:
    """Split a base64 `data:` URL into (mime type, bytes); None if not decodable."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    mime = header[len("data:") : -len(";base64")].split(";")[0].strip().lower()
    try:
        return mime, base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        return None


def describe_image(url: str) -> tuple[str, int]:
    """Describe one image and estimate its prompt tokens (Qwen3-VL: about one per 32x32 block)."""
    if not url.startswith("data:"):
        return "an image by URL", 256
    parsed = _parse_data_url(url)
    if parsed is None:
        return "an undecodable image data URL", 0
    _, data = parsed
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            fmt = image.format or "unknown format"
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return f"an unreadable image ({len(data)} bytes)", 0
    tokens = max(4, math.ceil(width / 32) * math.ceil(height / 32))
    return f"{width}x{height} {fmt}", tokens


def describe_video(url: str) -> tuple[str, int]:
    """Describe one video: container, byte size and, when PyAV can read it, duration and size."""
    if not url.startswith("data:"):
        return "a video by URL", 1024
    parsed = _parse_data_url(url)
    if parsed is None:
        return "an undecodable video data URL", 0
    mime, data = parsed
    kind = mime.split("/")[-1].upper() if "/" in mime else "video"
    details = [kind, f"{len(data)} bytes"]
    with contextlib.suppress(Exception):  # any PyAV failure only means "no duration"
        import av

        with av.open(io.BytesIO(data)) as container:
            if container.duration is not None:
                details.append(f"{container.duration / 1_000_000:.1f} s")
            if container.streams.video:
                stream = container.streams.video[0]
                details.append(f"{stream.width}x{stream.height}")
    return ", ".join(details), 1024


def analyse(messages: list[Any], turns: list[Turn]) -> Conversation:
    """Build the Conversation summary; decodes media headers, so may take a few ms."""
    user_texts = [turn.text for turn in turns if turn.role == "user"]
    conversation = Conversation(question=user_texts[-1] if user_texts else "", n_messages=len(turns),
                                n_user=len(user_texts))
    tokens = sum(4 + len(turn.text.split()) for turn in turns)
    media: list[Media] = [m for turn in turns for m in turn.media]
    for item in media:
        describe = describe_image if item.kind == "image" else describe_video
        description, media_tokens = describe(item.url)
        (conversation.images if item.kind == "image" else conversation.videos).append(description)
        tokens += media_tokens
    conversation.prompt_tokens = tokens
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    conversation.fingerprint = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return conversation


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _media_phrase(descriptions: list[str], word: str) -> str:
    """E.g. '1 image (640x480 PNG)' or '0 videos'."""
    phrase = _plural(len(descriptions), word)
    return f"{phrase} ({'; '.join(descriptions)})" if descriptions else phrase


def _quote(text: str) -> str:
    """One-line, shortened rendering of the user's question."""
    flat = " ".join(text.split())
    return flat if len(flat) <= QUOTE_MAX_CHARS else flat[: QUOTE_MAX_CHARS - 3].rstrip() + "..."


def compose_answer(conversation: Conversation, model: str, sample: int = 0) -> str:
    """The deterministic reply text: same conversation, model and sample index, same bytes.

    Samples (`n > 1`) differ in their fingerprint sentence, as sampled answers differ.
    """
    fingerprint = conversation.fingerprint
    if sample:
        fingerprint = hashlib.sha256(f"{fingerprint}:{sample}".encode()).hexdigest()
    digest = bytes.fromhex(fingerprint)
    sentence = (
        f"the {_ADJECTIVES[digest[0] % 16]} {_NOUNS[digest[1] % 16]} {_VERBS[digest[2] % 8]} "
        f"{_ADVERBS[digest[3] % 8]} beside the {_ADJECTIVES[digest[4] % 16]} {_NOUNS[digest[5] % 16]}."
    )
    question = _quote(conversation.question)
    asked = f"You asked: '{question}'." if question else "You sent no text."
    return (
        f"[simulated worker, model {model}, no GPU] {asked} "
        f"I received {_media_phrase(conversation.images, 'image')} and "
        f"{_media_phrase(conversation.videos, 'video')} in a conversation of "
        f"{_plural(conversation.n_messages, 'message')} ({conversation.n_user} from the user). "
        f"This is a canned reply, not real model output; reply fingerprint "
        f"{fingerprint[:8]}: {sentence}"
    )


def tokenize(text: str) -> list[str]:
    """Split into word 'tokens' that keep their leading whitespace, so they re-join exactly."""
    return re.findall(r"\s*\S+", text)
