"""Workers that speak OpenAI (vLLM, SGLang, the stand-in worker).

One pooled aiohttp session for every worker, keeping connections alive; streamed answers
are passed through chunk by chunk as they arrive, never collected first. aiohttp rather
than httpx: measured on the gateway's warm path, httpx's connection pool spent more CPU per
request than the whole rest of the gateway (bench/gateway_bench.py, the closing note of
the performance issue has the figures).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson

from ..errors import UpstreamError, WorkerUnreachable
from .base import IDENTITY_HEADER, Identity

JSON = {"content-type": "application/json"}


class OpenAIBackend:
    def __init__(self, timeout: float = 600.0) -> None:
        self.timeout = timeout  # read per request, so a hot reload applies to the next one
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Made on first use, inside the event loop that will use it."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True),
                trust_env=False,  # workers are on private addresses; a proxy must not sit between
                auto_decompress=False,  # bytes pass through as the worker sent them
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def _timeout(self, total: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total or self.timeout, connect=5.0)

    async def health(self, base_url: str, expect: Identity) -> bool:
        try:
            async with self.session.get(base_url + "/health", timeout=self._timeout(2.0)) as r:
                shown = r.headers.get(IDENTITY_HEADER, "")
                ok = r.status == 200
            if expect.mode == "auto" and shown:
                return ok and shown == expect.instance
            if expect.mode == "none" and ok:
                return True
            if expect.mode != "none" and not expect.model:
                return ok
            async with self.session.get(base_url + "/v1/models", timeout=self._timeout(2.0)) as r:
                if r.status != 200:
                    return False
                models = orjson.loads(await r.read())
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
            return False
        if expect.mode == "none":
            return True
        try:
            served = {m.get("id") for m in models.get("data", []) if isinstance(m, dict)}
        except AttributeError:
            return False
        return expect.model in served

    async def complete(self, base_url: str, body: dict, *, tier: str = "") -> dict:
        url = base_url + "/v1/chat/completions"
        try:
            async with self.session.post(url, data=orjson.dumps({**body, "stream": False}), headers=JSON,
                                         timeout=self._timeout()) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise _unreachable(base_url, exc) from exc
        except TimeoutError as exc:
            raise UpstreamError(f"the GPU worker did not answer within {self.timeout:g}s",
                                detail=f"worker {base_url} timed out") from exc
        if status != 200:
            raise _refused(base_url, status, raw)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("the GPU worker answered with invalid JSON",
                                detail=f"worker {base_url} answered with invalid JSON") from exc

    async def stream(self, base_url: str, body: dict, *, tier: str = "") -> AsyncIterator[bytes]:
        url = base_url + "/v1/chat/completions"
        try:
            resp = await self.session.post(url, data=orjson.dumps({**body, "stream": True}), headers=JSON,
                                           timeout=self._timeout())
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise _unreachable(base_url, exc) from exc
        except TimeoutError as exc:
            raise UpstreamError(f"the GPU worker did not answer within {self.timeout:g}s",
                                detail=f"worker {base_url} timed out") from exc
        try:
            if resp.status != 200:
                raise _refused(base_url, resp.status, await resp.read())
            async for chunk in resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError("the GPU worker broke off the answer",
                                detail=f"worker {base_url} broke off the stream: {exc!r}") from exc
        finally:
            resp.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _unreachable(base_url: str, exc: Exception) -> UpstreamError:
    return WorkerUnreachable("the GPU worker is unreachable",
                             detail=f"worker {base_url} is unreachable: {type(exc).__name__}: {exc}")


def _refused(base_url: str, status: int, raw: bytes) -> UpstreamError:
    """The worker's own words (an OpenAI error's message), never its address."""
    text = raw.decode("utf-8", errors="replace")
    try:
        said = orjson.loads(raw)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        said = text
    err = UpstreamError(f"the GPU worker answered {status}: {str(said)[:500]}",
                        detail=f"worker {base_url} answered {status}: {text[:500]}")
    if 400 <= status < 500:  # the request itself was wrong: say so as the client's error
        err.status = status
        err.type = "invalid_request_error"
        err.code = "rejected_by_worker"
    return err
