"""Every HTTP route has a stated credential, and docs/security.md says the same as the code."""

from __future__ import annotations

from pathlib import Path

from router.access import ROUTES, routes_markdown
from router.api import CHAT
from router.config import load_config
from router.server import build_app

ROOT = Path(__file__).resolve().parents[1]
IGNORED = {"/docs/oauth2-redirect"}  # FastAPI's helper page for the docs' login button


def test_every_api_route_has_a_stated_credential() -> None:
    app = build_app(load_config(None))
    served = {(m, r.path) for r in app.api.routes if getattr(r, "methods", None) and r.path not in IGNORED
              for m in r.methods if m != "HEAD"} | {("POST", CHAT)}  # the hot path, answered in front of FastAPI
    stated = {(m, p) for m, p, _ in ROUTES}
    assert served == stated, f"routes without a stated credential: {served - stated}; stale: {stated - served}"


def test_docs_security_md_holds_the_route_table_of_the_code() -> None:
    assert routes_markdown() in (ROOT / "docs" / "security.md").read_text(encoding="utf-8")


def test_docs_security_md_holds_the_ui_event_table_of_the_code() -> None:
    from ui.access import current_markdown

    assert current_markdown() in (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
