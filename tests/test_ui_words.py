"""What a chat user reads: errors name their files and questions, never the API paths the UI built."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from router.errors import BadRequest, PayloadTooLarge


@pytest.fixture
def uploads(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Two pictures where the chat would have them: in Gradio's upload folder."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()) / f"tiergate-words-{tmp_path.name}"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, colour in (("beach.png", (200, 180, 90)), ("receipt.png", (250, 250, 250))):
        Image.new("RGB", (40, 30), colour).save(folder / name)
        out[name] = str(folder / name)
    yield out
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()


def test_an_error_names_the_file_of_an_earlier_question(uploads: dict[str, str]) -> None:
    from ui import format as fmt
    from ui.engine import build_messages

    labels: dict[str, str] = {}
    messages = build_messages([("What is this?", [uploads["beach.png"]], "A beach.")], "And this?",
                              [uploads["receipt.png"]], labels)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    earlier = BadRequest("messages[0].content[0].image_url: image is 25 MiB, over the 20 MiB limit")
    latest = PayloadTooLarge("messages[2].content[0].image_url: image data is corrupt")
    empty = BadRequest("messages[2].content is empty: a user message needs text or an attachment")
    assert "beach.png (in an earlier question): image is 25 MiB" in fmt.error_text(earlier, labels)
    assert "receipt.png: image data is corrupt" in fmt.error_text(latest, labels)
    assert "your question is empty" in fmt.error_text(empty, labels)
    for exc in (earlier, latest, empty):
        assert "messages[" not in fmt.error_text(exc, labels)


def test_stop_messages_say_what_happens_to_the_gpu() -> None:
    from ui import format as fmt

    alone = fmt.stop_note("waiting", "heavy", "A100", 0, 300)
    shared = fmt.stop_note("waiting", "heavy", "A100", 2, 300)
    streaming = fmt.stop_note("answering", "heavy", "A100", 0, 300)
    assert "start is cancelled and nothing more is billed" in alone
    assert "2 other request(s) are waiting" in shared and "keeps booting" in shared and "5 min 00 s idle" in shared
    assert "nothing more is billed" not in shared
    assert "GPU is released for this answer" in streaming and "stops by itself after 5 min 00 s idle" in streaming


def test_task_names_are_words() -> None:
    from router import routing
    from ui.chat import TASK_CHOICES

    labels = {value: label for label, value in TASK_CHOICES}
    assert set(labels) == {"auto", *routing.TASKS}
    assert all("_" not in label for label in labels.values())  # no gui_agent, long_video on screen
