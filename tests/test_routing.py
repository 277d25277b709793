"""router.routing: every rule in English and Chinese, the priority order, the near misses, and tier choice."""

from __future__ import annotations

import pytest

from router.config import PACKAGED_CONFIG, parse_config
from router.errors import BadRequest, TierUnavailable
from router.media import Attachment, MediaLimits, ParsedMessages, parse_messages
from router.routing import MODES, RULES, TASKS, classify, explain, pick_tier
from tests.test_media import data_url, image_bytes, mp4_bytes, video_part


def ask(text: str, system: str | None = None) -> ParsedMessages:
    """Parse a real request: optional system prompt, one user message."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    return parse_messages([*messages, {"role": "user", "content": text}], MediaLimits())


def with_video(duration_s: float | None, text: str = "What happens here?") -> ParsedMessages:
    video = Attachment("video", "0" * 64, 1000, "video/mp4", None, duration_s=duration_s)
    return ParsedMessages([], [video], text, text)


# (text, task): English and Chinese for every rule
WORDING = [
    # gui_agent
    ("Click the login button", "gui_agent"),
    ("tap on Settings", "gui_agent"),
    ("Swipe left to see the next photo", "gui_agent"),
    ("long press the icon", "gui_agent"),
    ("Long-press the app, then clicking Delete", "gui_agent"),
    ("请点击登录按钮", "gui_agent"),
    ("向上滑动屏幕", "gui_agent"),
    ("长按这个图标", "gui_agent"),
    ("打开应用商店", "gui_agent"),
    # document (checked before html, which "HTML" would also match)
    ("Convert this page to QwenVL HTML.", "document"),
    ("qwenvl markdown", "document"),
    ("请将文档解析为QwenVL Markdown格式", "document"),
    ("对这页做版面分析", "document"),
    # html
    ("Write the HTML and CSS for this page", "html"),
    ("Turn this screenshot into a webpage", "html"),
    ("Write python code with matplotlib to plot this chart", "html"),
    ("Reproduce this chart as a plot", "html"),
    ("用HTML还原这个网页", "html"),
    ("写出这个界面的前端代码", "html"),
    # grounding
    ("Output the bbox of every car", "grounding"),
    ("Give the bounding box of the dog", "grounding"),
    ("Locate the red cup", "grounding"),
    ("Detect all people", "grounding"),
    ("Point to the exit sign", "grounding"),
    ("grounding: the cat on the left", "grounding"),
    ("What are the coordinates of the logo?", "grounding"),
    ("定位图中的猫", "grounding"),
    ("检测所有行人", "grounding"),
    ("框出所有汽车", "grounding"),
    ("给出按钮的坐标", "grounding"),
    # ocr
    ("Read the text on this sign", "ocr"),
    ("OCR this receipt", "ocr"),
    ("Extract the table as CSV", "ocr"),
    ("Transcribe the handwriting", "ocr"),
    ("What is the text in the image?", "ocr"),
    ("识别图中的文字", "ocr"),
    ("提取发票信息", "ocr"),
    ("读取这张表格", "ocr"),
    # caption
    ("Describe this picture", "caption"),
    ("What breed is this dog?", "caption"),
    ("这张图片里有什么？", "caption"),
]

# words that contain a rule's word but must not trigger it
NEAR_MISSES = [
    ("Summarise this thread", "caption"),  # not "read"
    ("Is the bread fresh?", "caption"),  # not "read"
    ("Help me decode this meme", "caption"),  # not "code"
    ("Who is the decoder in this diagram?", "caption"),  # not "code"
    ("A tapestry on a wall: describe it", "caption"),  # not "tap"
    ("Is the fish a clicker?", "caption"),  # not "click"
    ("Is she already at home?", "caption"),  # not "read"
    ("What is on the ground?", "caption"),  # not "grounding"
    ("Read the QR code", "ocr"),  # "QR code" is not programming
    ("What's the barcode number? extract it", "ocr"),  # nor is "barcode"
]

# two rules' words in one message: the earlier rule wins
PRIORITY = [
    ("Click the button, then read the text", "gui_agent"),
    ("点击按钮并识别文字", "gui_agent"),
    ("Convert to QwenVL HTML and write the code", "document"),
    ("Write code that draws each bbox", "html"),
    ("用代码框出所有汽车", "html"),
    ("Detect the text and output its bbox", "grounding"),
    ("Locate and extract the price", "grounding"),
    ("检测并提取文字", "grounding"),
]


@pytest.mark.parametrize(("text", "task"), WORDING + NEAR_MISSES + PRIORITY)
def test_wording_rules(text: str, task: str) -> None:
    assert classify(ask(text)) == task


@pytest.mark.parametrize("text", ["BBOX please", "bBox please", "Ocr This", "READ IT", "QWENVL HTML"])
def test_matching_ignores_case(text: str) -> None:
    assert classify(ask(text)) != "caption"


@pytest.mark.parametrize(
    "system",
    [
        "You are a phone agent.\n<tools>\n{\"name\": \"mobile_use\"}\n</tools>",
        "Use the computer_use tool to act on the screen.",
        "You can call mobile_use.",
    ],
)
def test_gui_agent_system_prompt(system: str) -> None:
    task, reason = explain(ask("Go back to the home screen", system=system))
    assert task == "gui_agent" and "GUI-agent system prompt" in reason


def test_only_the_gui_rule_reads_the_system_prompt() -> None:
    assert classify(ask("Describe the picture", system="You write code and read text.")) == "caption"


def test_only_the_last_user_message_counts() -> None:
    messages = [
        {"role": "user", "content": "Give me the bbox of the cat"},
        {"role": "assistant", "content": "[10, 20, 30, 40]"},
        {"role": "user", "content": "Now describe the picture"},
    ]
    assert classify(parse_messages(messages, MediaLimits())) == "caption"


def test_an_image_only_last_message_is_a_caption() -> None:
    png = data_url("image/png", image_bytes())
    messages = [
        {"role": "user", "content": "read this"},
        {"role": "assistant", "content": "Sure, send it."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png}}]},
    ]
    assert classify(parse_messages(messages, MediaLimits())) == "caption"


def test_parsed_messages_without_last_user_falls_back_to_text() -> None:
    assert classify(ParsedMessages([], [], "extract the table")) == "ocr"


# --- videos ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "task", "reason"),
    [
        (10.0, "video", "video attachment 10 s long (<= 300 s)"),
        (300.0, "video", "video attachment 300 s long (<= 300 s)"),
        (412.0, "long_video", "video attachment 412 s long (> 300 s)"),
        (300.4, "long_video", "video attachment 300.4 s long (> 300 s)"),
        (None, "video", "video attachment of unknown length"),
    ],
)
def test_video_length_decides(duration: float | None, task: str, reason: str) -> None:
    assert explain(with_video(duration)) == (task, reason)


def test_video_beats_every_wording_rule() -> None:
    for text, _ in WORDING:
        assert classify(with_video(10.0, text)) == "video"


def test_long_video_threshold_is_a_parameter() -> None:
    assert classify(with_video(10.0), long_video_seconds=5) == "long_video"
    assert classify(with_video(400.0), long_video_seconds=600) == "video"


def test_the_longest_known_video_decides() -> None:
    videos = [Attachment("video", "a" * 64, 1, "video/mp4", None, duration_s=d) for d in (None, 20.0, 500.0)]
    assert classify(ParsedMessages([], videos, "")) == "long_video"


def test_real_videos_end_to_end() -> None:
    def request(seconds: int) -> ParsedMessages:
        messages = [
            {"role": "user", "content": [video_part(data_url("video/mp4", mp4_bytes(seconds)))]},  # earlier turn
            {"role": "assistant", "content": "A grey square."},
            {"role": "user", "content": "Give me the bbox of the square"},
        ]
        return parse_messages(messages, MediaLimits())

    assert classify(request(10)) == "video"
    assert explain(request(400)) == ("long_video", "video attachment 400 s long (> 300 s)")


def test_reason_names_the_wording() -> None:
    task, reason = explain(ask("Output the bbox of the cat"))
    assert task == "grounding" and "wording 'bbox'" in reason
    assert explain(ask("Describe it"))[0] == "caption"


def test_rules_table_is_well_formed() -> None:
    assert {task for task, _, _ in RULES} <= set(TASKS)
    assert all(reason for _, _, reason in RULES)
    order = [task for task, _, _ in RULES]
    assert order.index("document") < order.index("html") < order.index("grounding") < order.index("ocr")


# --- tiers -------------------------------------------------------------------------

TABLE = {
    "caption": {"speed": "light", "balanced": "light", "quality": "standard"},
    "ocr": {"speed": "light", "balanced": "standard", "quality": "heavy"},
    "long_video": {"speed": "heavy", "balanced": "heavy", "quality": "heavy"},
    "grounding": {"speed": "standard"},  # a partial row
}


@pytest.mark.parametrize(
    ("task", "mode", "tier"),
    [
        ("caption", "speed", "light"),
        ("caption", "quality", "standard"),
        ("ocr", "balanced", "standard"),
        ("ocr", "quality", "heavy"),
        ("long_video", "speed", "heavy"),
        ("html", "quality", "standard"),  # missing from the table: caption's entry
        ("dance", "balanced", "light"),  # not a task at all: caption's entry
        ("grounding", "speed", "standard"),
        ("grounding", "quality", "standard"),  # the row lacks this mode: caption's entry
    ],
)
def test_pick_tier(task: str, mode: str, tier: str) -> None:
    assert pick_tier(TABLE, task, mode) == tier


def test_unknown_mode_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as info:
        pick_tier(TABLE, "caption", "turbo")
    assert info.value.status == 400 and "unknown mode 'turbo'" in info.value.message
    assert info.value.param == "tiergate.mode"


def test_no_route_at_all_is_a_503_naming_what_to_configure() -> None:
    with pytest.raises(TierUnavailable) as info:
        pick_tier({"ocr": dict.fromkeys(MODES, "light")}, "html", "speed")
    assert info.value.status == 503
    assert "routing.tasks.html.speed" in info.value.message and "routing.tasks.caption.speed" in info.value.message


def test_every_task_routes_with_the_shipped_table() -> None:
    cfg = parse_config(PACKAGED_CONFIG.read_text(), str(PACKAGED_CONFIG))
    table = {t: r.model_dump() for t, r in cfg.routing.tasks.items()}
    for task in TASKS:
        for mode in MODES:
            assert pick_tier(table, task, mode) in cfg.tiers
