"""Who is using the UI: the login of this browser session, checked on the server in every handler.

The login lives in a `gr.State`, which Gradio keeps on the server per browser session: a
client cannot forge it, only obtain it by calling the login handler with a valid password.
Handlers never trust what the page shows (a hidden panel is no protection); each one asks
`identity` (or `require_admin`) first, so a raw queue call without a login gets nothing.

Roles: `admin` (everything) and `presenter` (browse, search, replay and export every cached
answer; no pinning, importing or tier control). With `[gateway] require_login`, Gradio's
own login page admits configured users, and their role comes from the config.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from router.auth import LoginLimiter, Throttled, role_of
from router.config import Config

SESSION_SECONDS = 12 * 3600


def identity(cfg: Config, session: Any, request: gr.Request | None = None) -> tuple[str, str]:
    """(user, role) of this browser session, or ("", "") when nobody logged in (or the login expired)."""
    if isinstance(session, dict) and session.get("user") and time.time() - float(session.get("at", 0)) < SESSION_SECONDS:
        return str(session["user"]), str(session.get("role") or "admin")
    username = getattr(request, "username", None) if request is not None else None
    if username:  # admitted by Gradio's login page (`require_login`)
        return str(username), role_of(cfg, str(username))
    return "", ""


def admin_user(cfg: Config, session: Any, request: gr.Request | None = None) -> str:
    """The logged-in admin's name, or '' (a presenter is not an admin)."""
    user, role = identity(cfg, session, request)
    return user if role == "admin" else ""


def require_admin(cfg: Config, session: Any, request: gr.Request | None = None) -> str:
    user, role = identity(cfg, session, request)
    if role != "admin":
        why = "a presenter login cannot do this" if user else "log in on the Admin tab first (API: call /admin_login)"
        raise gr.Error(f"Admin login required: {why}.", title="Not logged in")
    return user


def presenter_public(cfg: Config) -> bool:
    """`[presenter] public = true`: anyone may browse, search and export every cached answer."""
    return bool(getattr(getattr(cfg, "presenter", None), "public", False))


def can_browse(cfg: Config, session: Any, request: gr.Request | None = None) -> bool:
    """May this session see everyone's cached answers (not only the pinned ones)?"""
    return presenter_public(cfg) or identity(cfg, session, request)[1] in ("admin", "presenter")


def client_address(request: gr.Request | None) -> str:
    client = getattr(request, "client", None)
    return str(getattr(client, "host", "") or "unknown")


async def login(limiter: LoginLimiter, cfg: Config, user: str, password: str, source: str) -> dict | None:
    """A session dict for valid credentials, else None; `Throttled` while this source or name is locked out."""
    user = (user or "").strip()
    role = await limiter.login(cfg, source, user, password)
    if role is None:
        return None
    return {"user": user, "role": role, "at": time.time()}


__all__ = ["Throttled", "admin_user", "can_browse", "client_address", "identity", "login", "require_admin"]
