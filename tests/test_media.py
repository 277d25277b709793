"""router.media on real bytes: Pillow-made PNG/JPEG, PyAV-made MP4, and the ways clients get them wrong."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import struct
import zlib
from fractions import Fraction

import av
import pytest
from PIL import Image

from router.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from router.media import Attachment, MediaLimits, ParsedMessages, parse_messages

LIMITS = MediaLimits()


# --- real media --------------------------------------------------------------------


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


@functools.cache
def mp4_bytes(seconds: int) -> bytes:
    """A 64x64 MPEG-4 video at 1 fps: one frame per second keeps a 400 s video at ~20 KB and ~0.1 s to make."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=1)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(seconds):
            frame = av.VideoFrame(64, 64, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([i * 7 % 256]) * plane.buffer_size)
            frame.pts, frame.time_base = i, Fraction(1, 1)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def png_with_chunks(width: int, height: int, chunks: list[tuple[bytes, bytes]] = ()) -> bytes:
    """A structurally valid PNG (right CRCs) announcing `width` x `height`, with the given chunks."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    middle = b"".join(chunk(kind, body) for kind, body in chunks)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + middle + chunk(b"IEND", b"")


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def user(*parts: dict | str) -> list[dict]:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return [{"role": "user", "content": content}]


# --- what a good request gives --------------------------------------------------------


def test_text_only_request_keeps_messages_and_collects_text() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "user", "content": [{"type": "text", "text": "What now?"}]},
    ]
    parsed = parse_messages(messages, LIMITS)
    assert parsed.canonical == messages
    assert parsed.attachments == []
    assert parsed.text == "Be brief.\nHello\nWhat now?"
    assert parsed.last_user == "What now?"
    assert parsed.system == "Be brief."


def test_png_data_url_is_fingerprinted_and_measured() -> None:
    png = image_bytes("PNG", (40, 30))
    parsed = parse_messages(user("What is this?", image_part(data_url("image/png", png))), LIMITS)
    assert parsed.attachments == [
        Attachment("image", hashlib.sha256(png).hexdigest(), len(png), "image/png", None, width=40, height=30)
    ]
    assert parsed.canonical[0]["content"][1] == {
        "type": "image_url", "image_url": {"sha256": hashlib.sha256(png).hexdigest()}
    }
    assert "base64" not in json.dumps(parsed.canonical)
    assert parsed.last_user == "What is this?"


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": "URL"},  # the string shorthand
        {"type": "image", "image": "URL"},  # Qwen style
    ],
    ids=["image_url-string", "qwen-image"],
)
def test_other_image_part_shapes(part: dict) -> None:
    jpeg = image_bytes("JPEG", (16, 12))
    part = {**part, part["type"]: data_url("image/jpeg", jpeg)}
    (att,) = parse_messages(user(part), LIMITS).attachments
    assert (att.kind, att.mime, att.width, att.height, att.size) == ("image", "image/jpeg", 16, 12, len(jpeg))


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("JPEG", "image/jpg"),
                                          ("WEBP", "image/webp"), ("GIF", "image/gif"), ("BMP", "image/bmp")])
def test_every_accepted_image_format(fmt: str, mime: str) -> None:
    (att,) = parse_messages(user(image_part(data_url(mime, image_bytes(fmt, (33, 17))))), LIMITS).attachments
    assert (att.mime, att.width, att.height) == (mime, 33, 17)


def test_declared_type_need_not_match_the_bytes() -> None:
    # browsers mislabel files; the bytes decide, as they will for the model server
    (att,) = parse_messages(user(image_part(data_url("image/png", image_bytes("JPEG")))), LIMITS).attachments
    assert att.mime == "image/png" and att.width == 8


def test_videos_are_measured_with_pyav() -> None:
    short, long_ = mp4_bytes(10), mp4_bytes(400)
    parsed = parse_messages(
        user(video_part(data_url("video/mp4", short)), {"type": "video", "video": data_url("video/mp4", long_)}), LIMITS
    )
    assert [a.kind for a in parsed.attachments] == ["video", "video"]
    assert parsed.attachments[0].duration_s == pytest.approx(10, abs=1)
    assert parsed.attachments[1].duration_s == pytest.approx(400, abs=1)
    assert parsed.attachments[0].sha256 == hashlib.sha256(short).hexdigest()
    assert parsed.canonical[0]["content"][1] == {"type": "video", "video": {"sha256": hashlib.sha256(long_).hexdigest()}}


def test_unreadable_video_is_accepted_with_unknown_length() -> None:
    (att,) = parse_messages(user(video_part(data_url("video/mp4", b"not really a video" * 50))), LIMITS).attachments
    assert att.kind == "video" and att.duration_s is None and att.size == 900


def test_http_urls_are_accepted_without_fetching() -> None:
    url = "https://example.com/cat.png"
    parsed = parse_messages(user("cat?", image_part(url), video_part("http://example.com/v.mp4")), LIMITS)
    assert parsed.attachments[0] == Attachment("image", hashlib.sha256(url.encode()).hexdigest(), None, None, url)
    assert parsed.attachments[1].kind == "video" and parsed.attachments[1].duration_s is None
    assert parsed.canonical[0]["content"][1] == image_part(url)


def test_assistant_may_carry_images_and_system_text_is_kept_apart() -> None:
    png = image_bytes()
    messages = [
        {"role": "developer", "content": "You are a GUI agent."},
        {"role": "assistant", "content": [image_part(data_url("image/png", png))]},
        {"role": "user", "content": "next step"},
    ]
    parsed = parse_messages(messages, LIMITS)
    assert len(parsed.attachments) == 1
    assert parsed.system == "You are a GUI agent."
    assert parsed.last_user == "next step"


# --- canonical form: the cache key's input --------------------------------------------


def canonical_json(messages: list[dict]) -> str:
    return json.dumps(parse_messages(messages, LIMITS).canonical, sort_keys=True)


def test_same_image_bytes_give_the_same_canonical_form() -> None:
    png = image_bytes()
    a = canonical_json(user("What is it?", image_part(data_url("image/png", png))))
    b = canonical_json(user("What is it?", image_part(data_url("image/png", png))))
    assert a == b
    # the mime spelling and the image_url shorthand don't change the picture
    c = canonical_json(user("What is it?", {"type": "image_url", "image_url": data_url("image/PNG", png)}))
    assert c == a


def test_different_image_bytes_give_different_canonical_forms() -> None:
    a = canonical_json(user("What is it?", image_part(data_url("image/png", image_bytes(color=(1, 2, 3))))))
    b = canonical_json(user("What is it?", image_part(data_url("image/png", image_bytes(color=(3, 2, 1))))))
    assert a != b


def test_canonical_form_keeps_options_that_change_the_answer() -> None:
    png = image_bytes()
    low = {"type": "image_url", "image_url": {"url": data_url("image/png", png), "detail": "low"}}
    parsed = parse_messages(user(low), LIMITS)
    assert parsed.canonical[0]["content"][0]["image_url"] == {"detail": "low", "sha256": hashlib.sha256(png).hexdigest()}
    assert canonical_json(user(low)) != canonical_json(user(image_part(data_url("image/png", png))))


def test_input_messages_are_not_modified() -> None:
    messages = user("hi", image_part(data_url("image/png", image_bytes())))
    before = json.dumps(messages)
    parse_messages(messages, LIMITS)
    assert json.dumps(messages) == before


# --- what a bad request gets ----------------------------------------------------------

GOOD_PNG = data_url("image/png", image_bytes())


def rejects(messages: object, error: type[BadRequest], status: int, code: str, fragment: str, limits: MediaLimits = LIMITS):
    with pytest.raises(error) as info:
        parse_messages(messages, limits)
    exc = info.value
    assert type(exc) is error
    assert (exc.status, exc.code) == (status, code)
    assert fragment in exc.message, exc.message
    return exc


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        (None, "`messages` must be a non-empty list"),
        ({"role": "user"}, "`messages` must be a non-empty list"),
        ([], "`messages` is empty"),
    ],
)
def test_messages_must_be_a_non_empty_list(messages: object, fragment: str) -> None:
    rejects(messages, BadRequest, 400, "invalid_messages", fragment)


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        (["hello"], "messages[0] must be an object with `role` and `content`, got a string"),
        ([{"role": "bot", "content": "hi"}], "messages[0].role 'bot' is not one of"),
        ([{"content": "hi"}], "messages[0].role None is not one of"),
        ([{"role": "user", "content": ""}], "messages[0].content is empty"),
        ([{"role": "user", "content": "   "}], "messages[0].content is empty"),
        ([{"role": "user", "content": []}], "messages[0].content is empty"),
        ([{"role": "user", "content": [{"type": "text", "text": ""}]}], "messages[0].content is empty"),
        ([{"role": "user"}], "messages[0].content must be a string or a list of parts, got null"),
        ([{"role": "tool", "content": None}], "messages[0].content must be a string or a list of parts, got null"),
        ([{"role": "user", "content": 7}], "messages[0].content must be a string or a list of parts, got a number"),
        ([{"role": "system", "content": "s"}, {"role": "user", "content": ["hi"]}],
         "messages[1].content[0] must be an object with a string `type`"),
        (user("ok", {"type": "text", "text": 5}), "messages[0].content[1].text must be a string"),
        (user("ok", {"type": "input_audio", "input_audio": {}}), "messages[0].content[1]: unsupported part type 'input_audio'"),
        (user({"type": "image_url", "image_url": {}}), "messages[0].content[0].image_url: needs a URL"),
        (user({"type": "video", "video": ""}), "messages[0].content[0].video: needs a URL"),
    ],
)
def test_malformed_messages_are_named(messages: list, fragment: str) -> None:
    rejects(messages, BadRequest, 400, "invalid_request", fragment)


def test_user_message_with_only_an_image_is_fine() -> None:
    parsed = parse_messages(user(image_part(GOOD_PNG)), LIMITS)
    assert parsed.last_user == "" and len(parsed.attachments) == 1


def test_invalid_base64_is_refused_naming_the_part() -> None:
    messages = [{"role": "system", "content": "s"}, *user(image_part("data:image/png;base64,iVBORw0KGgo!!!"))]
    rejects(messages, BadRequest, 400, "invalid_base64", "messages[1].content[0].image_url: base64 data is not valid")


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,iVBORw0KGgo",  # bad padding
        "data:image/png;base64,iVBO Rw0K",  # whitespace is not tolerated
        "data:image/png;base64,ümlaut==",  # not ASCII
    ],
)
def test_base64_is_decoded_strictly(url: str) -> None:
    rejects(user(image_part(url)), BadRequest, 400, "invalid_base64", "base64 data is not valid")


def test_data_url_that_is_not_base64_is_refused() -> None:
    rejects(user(image_part("data:image/png,rawbytes")), BadRequest, 400, "invalid_base64", "must be base64-encoded")


def test_broken_video_base64_is_an_error_even_though_broken_video_is_not() -> None:
    rejects(user(video_part("data:video/mp4;base64,AAAA*")), BadRequest, 400, "invalid_base64",
            "messages[0].content[0].video_url: base64 data is not valid")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("ftp://example.com/a.png", "unsupported URL scheme 'ftp'"),
        ("/home/me/cat.png", "unsupported URL scheme (no scheme: a bare path?)"),
        ("cat.png", "unsupported URL scheme (no scheme: a bare path?)"),
    ],
)
def test_only_data_and_http_urls_are_accepted(url: str, fragment: str) -> None:
    exc = rejects(user("look", image_part(url)), BadRequest, 400, "unsupported_url", fragment)
    assert exc.message.startswith("messages[0].content[1].image_url: ")


@pytest.mark.parametrize(
    ("part", "fragment"),
    [
        (image_part(data_url("image/tiff", image_bytes("TIFF"))), "image type 'image/tiff' is not supported"),
        (image_part(data_url("video/mp4", b"xx")), "image type 'video/mp4' is not supported"),
        (image_part("data:;base64,AAAA"), "image type '(none)' is not supported"),
        (video_part(data_url("video/ogg", b"xx")), "video type 'video/ogg' is not supported"),
        (video_part(data_url("image/png", image_bytes())), "video type 'image/png' is not supported"),
    ],
)
def test_unsupported_media_types_are_415(part: dict, fragment: str) -> None:
    exc = rejects(user(part), UnsupportedMediaType, 415, "unsupported_media_type", fragment)
    assert exc.message.startswith("messages[0].content[0].")


@pytest.mark.parametrize(
    "data",
    [
        b"definitely not a picture",
        image_bytes("PNG")[:30],  # truncated after the header
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # a PNG signature and garbage
        image_bytes("TIFF"),  # a real image, but not one of the accepted formats
    ],
    ids=["text", "truncated-png", "png-signature-garbage", "tiff-labelled-png"],
)
def test_corrupt_images_are_refused_naming_the_part(data: bytes) -> None:
    messages = [*user("first"), {"role": "assistant", "content": "ok"}, *user("and this?", image_part(data_url("image/png", data)))]
    rejects(messages, BadRequest, 400, "invalid_image", "messages[2].content[1].image_url: image data is corrupt")


def test_pixel_bomb_is_refused_from_its_header() -> None:
    bomb = data_url("image/png", png_with_chunks(50_000, 50_000))  # what a decompression bomb shows a header read
    rejects(user(image_part(bomb)), PayloadTooLarge, 413, "image_too_large", "messages[0].content[0].image_url: image has too many pixels")


def test_image_over_the_limit_is_413_naming_the_limit_in_force() -> None:
    png = image_bytes("PNG", (64, 64), (1, 2, 3))
    rejects(user("x", image_part(data_url("image/png", png))), PayloadTooLarge, 413, "payload_too_large",
            f"messages[0].content[1].image_url: image is {len(png)} bytes, over the 100 bytes limit",
            MediaLimits(max_image_bytes=100))


def test_video_over_the_limit_is_413_with_sizes_in_mib() -> None:
    video = data_url("video/mp4", b"\x00" * (3 * 2**20 + 2**19))  # 3.5 MiB of zeros
    rejects(user(video_part(video)), PayloadTooLarge, 413, "payload_too_large",
            "messages[0].content[0].video_url: video is 3.5 MiB, over the 3 MiB limit", MediaLimits(max_video_bytes=3 * 2**20))


def test_size_limit_is_exact_at_the_boundary() -> None:
    png = image_bytes()
    assert parse_messages(user(image_part(data_url("image/png", png))), MediaLimits(max_image_bytes=len(png))).attachments
    rejects(user(image_part(data_url("image/png", png))), PayloadTooLarge, 413, "payload_too_large", "over the",
            MediaLimits(max_image_bytes=len(png) - 1))


def test_huge_payload_is_refused_before_decoding() -> None:
    # 40 MB of characters that are not base64 at all: refusing it as too large (not as bad
    # base64) shows the size was judged from the length alone, before any decoding.
    huge = "data:image/png;base64," + "!" * 40_000_000
    rejects(user(image_part(huge)), PayloadTooLarge, 413, "payload_too_large", "image is 28.6 MiB, over the 20 MiB limit")


def test_too_many_attachments_is_refused_before_any_decoding() -> None:
    # the third attachment is over the limit of two; none is even valid base64, so the
    # count must have been checked first
    parts = [image_part("data:image/png;base64,!!!!") for _ in range(3)]
    rejects(user("three", *parts), BadRequest, 400, "too_many_attachments",
            "messages[0].content[3].image_url: too many attachments: the request has 3, at most 2 are allowed",
            MediaLimits(max_attachments=2))


def test_attachments_are_counted_across_messages() -> None:
    messages = [*user(image_part(GOOD_PNG)), {"role": "assistant", "content": "a"}, *user(image_part(GOOD_PNG), "more")]
    assert len(parse_messages(messages, MediaLimits(max_attachments=2)).attachments) == 2
    rejects(messages + user(image_part("https://x.test/c.png")), BadRequest, 400, "too_many_attachments",
            "messages[3].content[0].image_url", MediaLimits(max_attachments=2))


def test_errors_carry_the_param_for_the_openai_error_body() -> None:
    exc = rejects(user("x", image_part("file:///a.png")), BadRequest, 400, "unsupported_url", "file")
    assert exc.body()["error"]["param"] == "messages[0].content[1].image_url"


# --- cost -------------------------------------------------------------------------


def test_image_pixels_are_not_decoded() -> None:
    # Intact PNG structure (valid chunk CRCs) around pixel data that cannot be inflated:
    # accepted with its size, which shows only the header and chunk structure were read.
    png = png_with_chunks(640, 480, [(b"IDAT", b"this is not zlib data")])
    with pytest.raises((OSError, zlib.error)):  # a real decode fails
        Image.open(io.BytesIO(png)).load()
    (att,) = parse_messages(user(image_part(data_url("image/png", png))), LIMITS).attachments
    assert (att.width, att.height) == (640, 480)


def test_a_huge_wrong_value_is_not_echoed_back() -> None:
    with pytest.raises(BadRequest) as exc:
        parse_messages([{"role": "x" * 1_000_000, "content": "hi"}], LIMITS)
    assert exc.value.param == "messages[0].role" and len(exc.value.message) < 200


def test_one_walk_serves_every_reader() -> None:
    """The worker and the Gradio backend read the turns media validation checked, in the same order."""
    from router.backends.gradio import flatten

    png = data_url("image/png", image_bytes())
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "image", "image": png},
                    {"type": "video_url", "video_url": {"url": data_url("video/mp4", mp4_bytes(1))}},
                    {"type": "text", "text": "what happens?"}]}]
    parsed = parse_messages(messages, LIMITS)
    prompt, media = flatten(parsed.turns)
    assert [m.kind for m in media] == [a.kind for a in parsed.attachments] == ["image", "video"]
    assert [m.where for m in media] == ["messages[1].content[0].image", "messages[1].content[1].video_url"]
    assert prompt == "System: Be brief.\n\nUser: what happens?"


def test_parsed_messages_is_a_plain_value() -> None:
    parsed = ParsedMessages([], [], "hi")
    assert parsed.last_user is None and parsed.system == ""
