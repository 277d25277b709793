"""Workers that speak OpenAI (vLLM, SGLang, the stand-in worker).

One pooled httpx client for every worker; streamed answers are passed through chunk by
chunk as they arrive, never collected first.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from ..errors import UpstreamError, WorkerUnreachable
from .base import IDENTITY_HEADER, Identity


class OpenAIBackend:
    def __init__(self, timeout: float = 600.0) -> None:
        self._timeout = timeout
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            trust_env=False,  # workers are on private addresses; a proxy must not sit between
        )

    @property
    def timeout(self) -> float:
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        """A hot reload of `request_timeout` applies to the next request."""
        self._timeout = seconds
        self.client.timeout = httpx.Timeout(seconds, connect=5.0)

    async def health(self, base_url: str, expect: Identity) -> bool:
        try:
            r = await self.client.get(base_url + "/health", timeout=2.0)
            shown = r.headers.get(IDENTITY_HEADER, "")
            if expect.mode == "auto" and shown:
                return r.status_code == 200 and shown == expect.instance
            if expect.mode == "none" and r.status_code == 200:
                return True
            if expect.mode != "none" and not expect.model:
                return r.status_code == 200
            models = await self.client.get(base_url + "/v1/models", timeout=2.0)
        except httpx.HTTPError:
            return False
        if models.status_code != 200:
            return False
        if expect.mode == "none":
            return True
        try:
            served = {m.get("id") for m in models.json().get("data", []) if isinstance(m, dict)}
        except (ValueError, AttributeError):
            return False
        return expect.model in served

    async def complete(self, base_url: str, body: dict, *, tier: str = "") -> dict:
        try:
            r = await self.client.post(base_url + "/v1/chat/completions", json={**body, "stream": False})
        except httpx.HTTPError as exc:
            raise _unreachable(base_url, exc) from exc
        if r.status_code != 200:
            raise _refused(base_url, r.status_code, r.text)
        try:
            return r.json()
        except ValueError as exc:
            raise UpstreamError("the GPU worker answered with invalid JSON",
                                detail=f"worker {base_url} answered with invalid JSON") from exc

    async def stream(self, base_url: str, body: dict, *, tier: str = "") -> AsyncIterator[bytes]:
        req = self.client.build_request("POST", base_url + "/v1/chat/completions", json={**body, "stream": True})
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise _unreachable(base_url, exc) from exc
        try:
            if resp.status_code != 200:
                await resp.aread()
                raise _refused(base_url, resp.status_code, resp.text)
            async for chunk in resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamError("the GPU worker broke off the answer",
                                detail=f"worker {base_url} broke off the stream: {exc!r}") from exc
        finally:
            await resp.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


def _unreachable(base_url: str, exc: Exception) -> UpstreamError:
    return WorkerUnreachable("the GPU worker is unreachable",
                             detail=f"worker {base_url} is unreachable: {type(exc).__name__}: {exc}")


def _refused(base_url: str, status: int, text: str) -> UpstreamError:
    """The worker's own words (an OpenAI error's message), never its address."""
    try:
        said = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        said = text
    err = UpstreamError(f"the GPU worker answered {status}: {str(said)[:500]}",
                        detail=f"worker {base_url} answered {status}: {text[:500]}")
    if 400 <= status < 500:  # the request itself was wrong: say so as the client's error
        err.status = status
        err.type = "invalid_request_error"
        err.code = "rejected_by_worker"
    return err
