"""Errors that become OpenAI-style JSON answers.

Every failure a client can see is one of these, so the API layer turns them into
`{"error": {"message", "type", "code"}}` with the right status in one place.
"""

from __future__ import annotations


class TiergateError(Exception):
    """Base of every client-visible error; carries its HTTP status and OpenAI error type."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message  # for the gateway's log only: may name internal addresses
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }


class BadRequest(TiergateError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class NotFound(BadRequest):
    status = 404
    code = "not_found"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(BadRequest):
    status = 415
    code = "unsupported_media_type"


class Unauthorized(TiergateError):
    status = 401
    type = "authentication_error"
    code = "unauthorized"


class TooManyAttempts(TiergateError):
    """Too many wrong passwords or tokens from one source: it must wait (`Retry-After`)."""

    status = 429
    type = "rate_limit_error"
    code = "too_many_attempts"


class QueueFull(TiergateError):
    """The tier's wait queue is at `max_queue`; the client should retry later."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class TierUnavailable(TiergateError):
    """A tier could not be started (and no fallback could serve)."""

    status = 503
    type = "tier_unavailable"
    code = "tier_unavailable"


class TierTimeout(TierUnavailable):
    status = 504
    code = "tier_timeout"


class StateUnavailable(TiergateError):
    """The shared state (Redis) cannot be reached: nothing can be started or leased right now."""

    status = 503
    type = "service_unavailable"
    code = "state_unavailable"


class UpstreamError(TiergateError):
    """The worker answered with an error or broke off."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class WorkerUnreachable(UpstreamError):
    """Nothing answers at the worker's address (it died, or the machine was reclaimed)."""
