"""Workers that speak OpenAI (vLLM, SGLang, the stand-in worker).

One pooled httpx client for every worker; streamed answers are passed through chunk by
chunk as they arrive, never collected first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from ..errors import UpstreamError, WorkerUnreachable


class OpenAIBackend:
    def __init__(self, timeout: float = 600.0) -> None:
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            trust_env=False,  # workers are on private addresses; a proxy must not sit between
        )

    async def health(self, base_url: str) -> bool:
        for path in ("/health", "/v1/models"):
            try:
                r = await self.client.get(base_url + path, timeout=2.0)
            except httpx.HTTPError:
                return False
            if r.status_code == 200:
                return True
        return False

    async def complete(self, base_url: str, body: dict) -> dict:
        try:
            r = await self.client.post(base_url + "/v1/chat/completions", json={**body, "stream": False})
        except httpx.HTTPError as exc:
            raise _unreachable(base_url, exc) from exc
        if r.status_code != 200:
            raise _refused(base_url, r.status_code, r.text)
        try:
            return r.json()
        except ValueError as exc:
            raise UpstreamError(f"worker {base_url} answered with invalid JSON") from exc

    async def stream(self, base_url: str, body: dict) -> AsyncIterator[bytes]:
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
            raise UpstreamError(f"worker {base_url} broke off the stream: {exc}") from exc
        finally:
            await resp.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


def _unreachable(base_url: str, exc: Exception) -> UpstreamError:
    return WorkerUnreachable(f"worker {base_url} is unreachable: {type(exc).__name__}: {exc}")


def _refused(base_url: str, status: int, text: str) -> UpstreamError:
    err = UpstreamError(f"worker {base_url} answered {status}: {text[:500]}")
    if 400 <= status < 500:  # the request itself was wrong: say so as the client's error
        err.status = status
        err.type = "invalid_request_error"
        err.code = "rejected_by_worker"
    return err
