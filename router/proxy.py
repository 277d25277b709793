"""Passing UI requests from a pool's gateway process to the one that serves the UI.

Gradio keeps a session's queue in one process's memory, so with `serve --workers N` the
UI lives in process 0 only. The other processes answer the API themselves and stream
everything else (pages, uploads, the queue's server-sent events) to process 0 over a
private unix socket. They add the client's address with a token only the pool knows, so
process 0 can trust it (login throttling counts per client) and nobody outside can forge it
(`api.Front` takes it only with the token, and strips the headers either way).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount

UI_START_WAIT = 60.0  # seconds a UI request waits for process 0 to come up (it loads Gradio at start)
TOKEN_HEADER = "x-tiergate-pool"
CLIENT_HEADER = "x-tiergate-client"
POOL_TOKEN, POOL_CLIENT = TOKEN_HEADER.encode(), CLIENT_HEADER.encode()
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length", TOKEN_HEADER, CLIENT_HEADER}


def mount_proxy(app: FastAPI, ui_socket: str, token: str) -> FastAPI:
    client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=ui_socket), base_url="http://ui",
                               timeout=httpx.Timeout(None, connect=5.0), trust_env=False)

    async def forward(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        headers += [(TOKEN_HEADER, token), (CLIENT_HEADER, request.client.host if request.client else "")]
        upstream = client.build_request(request.method, request.url.path, params=request.url.query.encode(),
                                        headers=headers, content=request.stream())
        deadline = asyncio.get_running_loop().time() + UI_START_WAIT
        while True:
            try:
                resp = await client.send(upstream, stream=True)
                break
            except httpx.ConnectError:  # process 0 is still loading the UI (a few seconds at start): wait for it
                if asyncio.get_running_loop().time() > deadline:
                    return Response("the UI process is not answering; retry in a moment", status_code=503,
                                    headers={"Retry-After": "2"})
                await asyncio.sleep(0.2)
            except httpx.HTTPError:
                return Response("the UI process did not answer", status_code=502)
        out = {k: v for k, v in resp.headers.multi_items() if k.lower() not in HOP_BY_HOP}

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()

        return _Stream(body(), status_code=resp.status_code, headers=out)

    app.router.routes.append(Mount("/", app=_Endpoint(forward)))
    return app


class _Endpoint:
    """Any path, any method: an ASGI app around one request handler."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


class _Stream(StreamingResponse):
    """Closes the upstream response however this one ends (a browser closing the page included)."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
