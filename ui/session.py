"""Admin login for the UI, checked on the server in every admin handler.

The login lives in a `gr.State`, which Gradio keeps on the server per browser session:
a client cannot forge it, only obtain it by calling the login handler with a valid
password. Handlers never trust what the page shows (a hidden panel is no protection);
each one calls `require_admin` first, so a direct API call without login is refused.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import gradio as gr

from router.auth import check_login
from router.config import Config

SESSION_SECONDS = 12 * 3600
FAILED_LOGIN_DELAY = 1.0  # slows password guessing through the UI


def admin_user(session: Any, request: gr.Request | None = None) -> str:
    """The logged-in admin's name, or '' if this session has none (or it expired)."""
    if isinstance(session, dict) and session.get("user") and time.time() - float(session.get("at", 0)) < SESSION_SECONDS:
        return str(session["user"])
    # With `require_login`, Gradio's own login page admits configured admins only.
    username = getattr(request, "username", None) if request is not None else None
    return str(username) if username else ""


def require_admin(session: Any, request: gr.Request | None = None) -> str:
    user = admin_user(session, request)
    if not user:
        raise gr.Error("Admin login required: log in on the Admin tab first (API: call /admin_login).", title="Not logged in")
    return user


async def login(cfg: Config, user: str, password: str) -> dict | None:
    """A session dict for valid admin credentials, else None (after a short delay)."""
    user = (user or "").strip()
    ok = bool(user and password) and await asyncio.to_thread(check_login, cfg, user, password)
    if not ok:
        await asyncio.sleep(FAILED_LOGIN_DELAY)
        return None
    return {"user": user, "at": time.time()}
