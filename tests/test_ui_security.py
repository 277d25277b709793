"""The UI's side doors, tried as an attacker with no credentials would: raw Gradio queue calls over HTTP.

No gradio_client and no UI helpers: `RawGradio` speaks the wire protocol the browser uses
(`POST /gradio_api/queue/join`, then the `GET /gradio_api/queue/data` event stream, or
`POST /gradio_api/run/predict` for unqueued events), looking events up by name in `/config`.

One gateway for the module, on a real Redis, with a stand-in worker tier and a cache that
already holds a pinned demo answer and an unpinned private one.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from router.cache import Entry, ResponseCache
from router.config import AdminUser, CacheConfig, Config
from tests.conftest import GatewayProc, start_gateway, tier_toml, wait_for, worker_command, write_config

TOKEN = "ui-security-test-token"
TIER = "uisec"
SECRET_Q, SECRET_A = "what is on the private payslip SECRETQ", "the payslip says SECRETA"
DEMO_Q, DEMO_A = "describe the public demo picture DEMOQ", "a public demo answer DEMOA"
PRESENTER, PRESENTER_PW = "pat", "presenter-password"
HAS_ROLES = "role" in AdminUser.model_fields  # `[admin] users` roles land with the config change
HAS_PUBLIC = "presenter" in Config.model_fields  # `[presenter] public` too


class RawGradio:
    """A Gradio client reduced to raw HTTP, as a script on another host would write it."""

    def __init__(self, url: str, http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(base_url=url, timeout=60, trust_env=False)
        config = self.http.get("/config").json()
        self.deps = config["dependencies"]
        self.fns = {d["api_name"]: i for i, d in enumerate(self.deps) if d.get("api_name")}

    def call(self, api_name: str, data: list, session: str = "attacker", event_data: Any = None) -> dict:
        """The event's final message: {"success": bool, "data": [...]} or {"success": False, "error": "..."}."""
        fn = self.fns[api_name]
        body = {"fn_index": fn, "data": data, "session_hash": session, "event_data": event_data, "trigger_id": None}
        if self.deps[fn].get("queue") is False:  # unqueued events answer directly, as the browser calls them
            r = self.http.post("/gradio_api/run/predict", json=body)
            out = r.json()
            if r.status_code != 200 or "error" in out:
                return {"success": False, "error": str(out.get("error") or out), "raw": r.text}
            return {"success": True, "data": out["data"], "raw": r.text}
        r = self.http.post("/gradio_api/queue/join", json=body)
        r.raise_for_status()
        event = r.json()["event_id"]
        raw = []
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                raw.append(line)
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed" and msg.get("event_id") == event:
                    out = msg.get("output") or {}
                    if msg.get("success"):
                        return {"success": True, "data": out.get("data"), "raw": "\n".join(raw)}
                    return {"success": False, "error": str(out.get("error")), "raw": "\n".join(raw)}
        raise AssertionError(f"no completion for {api_name}: {raw}")

    def upload(self, path: Path) -> dict:
        """A file uploaded the way the browser does: the FileData naming Gradio's own copy."""
        with open(path, "rb") as fh:
            r = self.http.post("/gradio_api/upload", files={"files": (path.name, fh)})
        r.raise_for_status()
        return file_data(r.json()[0], path.name)


def file_data(path: str, name: str = "") -> dict:
    return {"path": path, "orig_name": name or Path(path).name, "meta": {"_type": "gradio.FileData"}}


def _seed_cache(data_dir: Path) -> None:
    """The cache as a gateway left it: one pinned demo answer, one private answer nobody pinned."""

    async def seed() -> None:
        cache = ResponseCache(CacheConfig(), data_dir / "cache")
        for key, q, a, pinned in (("a" * 64, SECRET_Q, SECRET_A, False), ("b" * 64, DEMO_Q, DEMO_A, True)):
            response = {"id": key[:8], "object": "chat.completion", "model": "m",
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": a}}]}
            await cache.put(Entry(key=key, response=response, tier=TIER, task="caption", model="m", question=q,
                                  created=time.time()))
            if pinned:
                await cache.pin(key)
        cache.close()

    asyncio.run(seed())


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("ui-security")
    _seed_cache(tmp / "data")
    admin = ""
    if HAS_ROLES:
        from router.auth import hash_password

        admin = (f'[admin]\nusers = [{{name = "{PRESENTER}", password_hash = "{hash_password(PRESENTER_PW)}", '
                 'role = "presenter"}]\n')
    config = write_config(tmp, tier_toml(TIER, idle="30s", command=worker_command(boot=0.5)))
    config.write_text(config.read_text() + "\n" + admin)
    proc = start_gateway(config, redis_url=redis_url, env={"TIERGATE_ADMIN_TOKEN": TOKEN}, ui=True)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def raw(gw: GatewayProc) -> Iterator[RawGradio]:
    client = RawGradio(gw.url)
    yield client
    client.http.close()


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file on the server that nobody uploaded: a real picture, so only the path check can refuse it."""
    path = tmp_path_factory.mktemp("server-files") / "secret.png"
    Image.new("RGB", (33, 44), (1, 2, 3)).save(path)
    return path


def _starts(gw: GatewayProc) -> int:
    return gw.tiers()[TIER]["starts"]


# --- #8.1: no file is read unless it came through an upload ------------------------------


def test_chat_api_refuses_a_server_path_and_says_nothing_about_it(gw: GatewayProc, raw: RawGradio, secret: Path) -> None:
    before = _starts(gw)
    present = raw.call("chat", ["describe", [file_data(str(secret))], "balanced", "auto"], session="s1")
    missing = raw.call("chat", ["describe", [file_data(str(secret.with_name("nothere.png")))], "balanced", "auto"],
                       session="s2")
    sneaky = raw.call("chat", ["describe", [file_data(f"/tmp/gradio/../../{secret}")], "balanced", "auto"], session="s3")
    for out in (present, missing, sneaky):
        assert out["success"] is False
        assert "33x44" not in out["raw"] and "simulated worker" not in out["raw"]  # never read, never answered
        assert "Errno" not in out["raw"] and "No such file" not in out["raw"]
    # the same words whether the file exists or not (only the name the attacker chose differs)
    assert present["error"].replace("secret.png", "X") == missing["error"].replace("nothere.png", "X")
    assert _starts(gw) == before  # no GPU was started for it


def test_chat_tab_events_refuse_a_server_path(gw: GatewayProc, raw: RawGradio, secret: Path) -> None:
    value = {"text": "describe", "files": [file_data(str(secret))]}
    sent = raw.call("chat_add_turn", [value, None], session="tab")
    assert sent["success"] is False and "33x44" not in sent["raw"]
    warmed = raw.call("chat_warm", [value, None, "balanced", "auto", ""], session="tab")
    assert warmed["success"] is False
    imported = raw.call("presenter_import", [file_data(str(secret)), None, ""], session="tab")
    assert imported["success"] is False and "Not imported" not in imported["raw"]  # its content was never parsed


def test_an_uploaded_file_is_still_answered(gw: GatewayProc, raw: RawGradio, secret: Path, tmp_path: Path) -> None:
    """The control: the same picture, uploaded the way the browser does, goes through."""
    copy = tmp_path / "mine.png"
    shutil.copy(secret, copy)
    out = raw.call("chat", ["describe", [raw.upload(copy)], "balanced", "auto"], session="up")
    assert out["success"] is True and "33x44" in out["data"][0]


def test_the_engine_reads_only_uploads(tmp_path: Path, secret: Path) -> None:
    """`read_upload` is the last check before a byte is read, whatever a handler was given."""
    from gradio.utils import get_upload_folder

    from router.errors import BadRequest
    from ui.engine import read_upload

    uploads = Path(get_upload_folder())
    uploads.mkdir(parents=True, exist_ok=True)
    inside = uploads / f"tiergate-test-{os.getpid()}"
    inside.mkdir(exist_ok=True)
    try:
        good = inside / "ok.png"
        shutil.copy(secret, good)
        assert read_upload(str(good)) == secret.read_bytes()
        link = inside / "link.png"  # a link inside the upload folder to a file outside it
        link.symlink_to(secret)
        words = set()
        for path in (str(secret), str(secret) + ".missing", str(link), f"{inside}/../../{secret}", "/etc/passwd"):
            with pytest.raises(BadRequest) as refused:
                read_upload(path)
            words.add(refused.value.message.split(":", 1)[1])
        assert len(words) == 1  # one message for all of them: nothing tells what exists
    finally:
        shutil.rmtree(inside, ignore_errors=True)


# --- #8.3: the presenter shows pinned answers only, unless logged in ----------------------


def test_anonymous_presenter_sees_only_pinned_answers(raw: RawGradio) -> None:
    listed = raw.call("presenter_list", ["", None], session="anon")
    assert listed["success"] and DEMO_Q[:40] in listed["raw"]
    assert "SECRET" not in listed["raw"]
    searched = raw.call("presenter_list", ["payslip", None], session="anon")
    assert searched["success"] and "SECRET" not in searched["raw"]
    # the listing holds one key (the pinned one); a forged index finds nothing else
    for index in (0, 1, 5):
        picked = raw.call("presenter_select", [None, None], session="anon", event_data={"index": index, "value": None})
        assert "SECRET" not in picked["raw"]


def test_anonymous_cannot_export_or_pin(gw: GatewayProc, raw: RawGradio) -> None:
    raw.call("presenter_list", ["", None], session="anon2")
    for name, data in (("presenter_export_shown", [None, None]), ("presenter_export_pinned", [None])):
        out = raw.call(name, data, session="anon2")
        assert "ui/export/" not in out["raw"] and "SECRET" not in out["raw"]
        assert "Log in" in out["raw"]
    raw.call("presenter_select", [None, None], session="anon2", event_data={"index": 0, "value": None})
    pinned = raw.call("presenter_pin", [None, "", None], session="anon2")
    assert "Pinning needs an admin login" in pinned["raw"]
    assert DEMO_Q[:40] in raw.call("presenter_list", ["", None], session="anon3")["raw"]  # still pinned


def _admin_session(raw: RawGradio, session: str) -> None:
    out = raw.call("admin_login", ["admin", TOKEN], session=session)
    assert out["success"] and "Logged in as" in out["raw"]


def test_admin_browses_everything_and_an_export_is_served_once(raw: RawGradio) -> None:
    _admin_session(raw, "adm")
    listed = raw.call("presenter_list", ["", None], session="adm")
    assert SECRET_Q[:40] in listed["raw"] and DEMO_Q[:40] in listed["raw"]
    out = raw.call("presenter_export_shown", [None, None], session="adm")
    link = out["data"][0]
    assert "ui/export/" in link and "Gradio" not in link
    url = "/" + link.split('href="', 1)[1].split('"', 1)[0]
    first = raw.http.get(url)
    assert first.status_code == 200 and "attachment" in first.headers["content-disposition"]
    lines = [json.loads(x) for x in first.text.splitlines()]
    assert lines[0]["tiergate_demo_set"] == 1 and {SECRET_Q, DEMO_Q} <= {e["question"] for e in lines[1:]}
    assert raw.http.get(url).status_code == 404  # served once: nothing left to fetch
    assert raw.http.get("/ui/export/not-a-token").status_code == 404


def test_exports_are_private_files_removed_after_download() -> None:
    from ui.presenter import Exports

    exports = Exports(ttl=60)
    token = exports.add(b"demo set", "x.jsonl")
    files = list(exports.dir.iterdir())
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600 and stat.S_IMODE(exports.dir.stat().st_mode) == 0o700
    assert exports.take(token) == (b"demo set", "x.jsonl")
    assert list(exports.dir.iterdir()) == [] and exports.take(token) is None
    stale = Exports(ttl=0)
    stale.take(stale.add(b"late", "y.jsonl"))
    assert list(stale.dir.iterdir()) == []


@pytest.mark.skipif(not HAS_ROLES, reason="`role` in [admin] users is added by the config change; not merged yet")
def test_presenter_login_browses_and_exports_but_cannot_pin_or_import(raw: RawGradio, tmp_path: Path) -> None:
    out = raw.call("admin_login", [PRESENTER, PRESENTER_PW], session="pres")
    assert "presenter" in out["raw"]
    listed = raw.call("presenter_list", ["", None], session="pres")
    assert SECRET_Q[:40] in listed["raw"]
    assert "ui/export/" in raw.call("presenter_export_shown", [None, None], session="pres")["raw"]
    raw.call("presenter_select", [None, None], session="pres", event_data={"index": 1, "value": None})
    assert "Pinning needs an admin login" in raw.call("presenter_pin", [None, "", None], session="pres")["raw"]
    demo = tmp_path / "demo.jsonl"
    demo.write_text(json.dumps({"tiergate_demo_set": 1, "count": 0}) + "\n")
    imported = raw.call("presenter_import", [raw.upload(demo), None, ""], session="pres")
    assert "Importing needs admin login" in imported["raw"]
    assert "Admin login required" in raw.call("admin_stop", [None, TIER], session="pres")["raw"]


@pytest.mark.skipif(not HAS_PUBLIC, reason="`[presenter] public` is added by the config change; not merged yet")
def test_public_presenter_opens_browsing_but_not_pinning(gw: GatewayProc, raw: RawGradio) -> None:
    _admin_session(raw, "adm-public")
    original = gw.config.read_text()
    saved = raw.call("admin_save", [None, original + "\n[presenter]\npublic = true\n"], session="adm-public")
    assert "Saved" in saved["raw"]
    try:
        listed = raw.call("presenter_list", ["", None], session="anon-public")
        assert SECRET_Q[:40] in listed["raw"]
        raw.call("presenter_select", [None, None], session="anon-public", event_data={"index": 1, "value": None})
        assert "Pinning needs an admin login" in raw.call("presenter_pin", [None, "", None], session="anon-public")["raw"]
    finally:
        raw.call("admin_save", [None, original], session="adm-public")
    wait_for(lambda: "SECRET" not in raw.call("presenter_list", ["", None], session="anon-after")["raw"],
             what="the presenter to be private again")


def test_every_ui_event_says_who_may_call_it(raw: RawGradio) -> None:
    """The table docs/security.md is made from: no event of the running app may be missing from it."""
    from ui.access import ACCESS, markdown

    names = {d.get("api_name") or "" for d in raw.deps}
    assert names - set(ACCESS) == set(), "events without an access rule in ui/access.py"
    assert set(ACCESS) - names == set(), "access rules for events that do not exist"
    table = markdown({"dependencies": raw.deps})
    assert "| `presenter_pin` | private | admin login |" in table and "/ui/export/" in table
