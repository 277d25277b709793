"""Who may call which route: decided once, before any route runs (by `api.Front`).

Public by design, private by default:
* `GET /healthz` is public (load balancers), and `POST /api/instances/{id}/ready` carries
  its own credential (`$TIERGATE_CALLBACK_TOKEN`), checked by the route.
* With `[gateway] require_login = false` (the default) the chat API, models and status
  are open, as the UI is; admin routes check `$TIERGATE_ADMIN_TOKEN` themselves.
* With `require_login = true`, every other API route (`/v1`, `/api`, `/metrics`, the
  OpenAPI schema and docs) needs a credential: a Bearer API key from `[gateway] api_keys`
  (or `$TIERGATE_API_KEYS`), the admin token, or the cookie of a UI login. The UI's own
  routes are guarded by Gradio's login page.
`ROUTES` lists every route with its credential; docs/security.md is generated from it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable
from typing import Any

import orjson

from .apikeys import verify_api_key
from .auth import LoginLimiter, Throttled
from .errors import TiergateError, TooManyAttempts, Unauthorized

PUBLIC = re.compile(r"^/healthz/?$|^/api/instances/[^/]+/ready/?$")
GUARDED = re.compile(r"^/(v1|api)(/|$)|^/metrics/?$|^/openapi\.json$")
ADMIN = "`Authorization: Bearer $TIERGATE_ADMIN_TOKEN`"
LOGIN = "open; with `require_login`: an API key, the admin token or a UI login"

# (method, path, credential): what docs/security.md prints, checked against the app by a test.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("POST", "/v1/chat/completions", LOGIN),
    ("GET", "/v1/models", LOGIN),
    ("GET", "/api/tiers", f"{LOGIN}; the workers' addresses only with the admin token"),
    ("POST", "/api/tiers/{name}/{action}", f"{ADMIN} (and, with `require_login`, that is the credential)"),
    ("GET", "/api/events", ADMIN),
    ("GET", "/api/config", ADMIN),
    ("PUT", "/api/config", ADMIN),
    ("POST", "/api/instances/{instance_id}/ready", "`Authorization: Bearer $TIERGATE_CALLBACK_TOKEN` (a worker)"),
    ("GET", "/healthz", "public"),
    ("GET", "/ui/export/{token}", "the link itself: a presenter export's random one-time token (10 minutes)"),
    ("GET", "/metrics", LOGIN),
    ("GET", "/openapi.json", LOGIN),
    ("GET", "/api/docs", LOGIN),
)

# cookies -> the logged-in UI user, or None; the UI puts one on `api.state.session_check` when mounted
SessionCheck = Callable[[dict[str, str]], str | None]


class Access:
    """Who may call a guarded route; asked by the front of the app before any route runs."""

    def __init__(self, gateway: Any, api: Any) -> None:
        self.gw = gateway
        self.api = api  # the UI puts its session check on `api.state.session_check` when it mounts

    async def admit(self, scope: dict) -> str | None:
        """The caller's id ('' for an open route or an anonymous caller where that is allowed); None: refuse."""
        if not self.gw.cfg.gateway.require_login:
            return ""
        path = scope["path"]
        if PUBLIC.match(path) or not GUARDED.match(path):
            return ""
        return await self.identify(scope)

    async def identify(self, scope: dict) -> str | None:
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.startswith("Bearer "):
            token = auth[7:].strip()
            if verify_api_key(token, self.gw.cfg.api_key_hashes()):  # microseconds: keys are random, not stretched
                return f"key:{hashlib.sha256(token.encode()).hexdigest()[:12]}"
            client = scope.get("client")
            if await token_ok(self.gw.logins, client[0] if client else "", "TIERGATE_ADMIN_TOKEN", token):
                return "admin"
            return None
        check: SessionCheck | None = getattr(self.api.state, "session_check", None)
        if check is not None and (user := check(_cookies(headers.get(b"cookie", b"")))):
            return f"ui:{user}"
        return None

    @staticmethod
    async def refuse(send: Any, retry_after: int = 0) -> None:
        if retry_after:
            err: TiergateError = TooManyAttempts(f"too many wrong credentials from here; try again in {retry_after} s",
                                                 headers={"Retry-After": str(retry_after)})
        else:
            err = Unauthorized("this gateway requires a credential: 'Authorization: Bearer <API key>' "
                               "(see [gateway] api_keys), or log in to the UI", code="missing_credential",
                               headers={"WWW-Authenticate": "Bearer"})
        headers = [(b"content-type", b"application/json")] + [(k.lower().encode(), v.encode())
                                                               for k, v in err.headers.items()]
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": orjson.dumps(err.body())})


async def token_ok(limiter: LoginLimiter, source: str, env: str, given: str) -> bool:
    """Is `given` the secret in `$env`? Guesses count like failed logins (`Throttled` once locked out)."""
    expected = os.environ.get(env, "")
    if not expected:
        return False
    if await limiter.retry_after(source, env) > 0:  # locked out: not even compared
        raise Throttled(await limiter.retry_after(source, env))
    if hmac.compare_digest(given.encode(), expected.encode()):
        return True
    if given:
        await limiter.failed(source, env)
    return False


def _cookies(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in raw.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out[name] = value
    return out


def routes_markdown() -> str:
    """The route table of docs/security.md (a test checks it against the app's routes)."""
    rows = ["| method | route | credential |", "|---|---|---|"]
    rows += [f"| {m} | `{p}` | {c} |" for m, p, c in ROUTES]
    return "\n".join(rows)


if __name__ == "__main__":  # python -m router.access: the route table of docs/security.md
    print(routes_markdown())
