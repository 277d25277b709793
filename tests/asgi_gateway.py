"""The real gateway app, in process: its own event loop thread, called over an ASGI transport.

The app, its Gateway, lifecycle and Redis connection are all real; only the TCP socket
between a client and the gateway is skipped, so one gateway can serve a whole test
module and each case costs a function call instead of a process start.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from router.api import create_app
from router.config import load_config
from router.gateway import Gateway

T = TypeVar("T")


class InProcessGateway:
    """`create_app(Gateway(cfg))` with its lifespan entered, on an event loop of its own thread."""

    def __init__(self, config: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="asgi-gateway", daemon=True)
        self._thread.start()
        self.cfg = load_config(str(config))
        self.gateway = Gateway(self.cfg)
        self.app = create_app(self.gateway)
        self._lifespan = self.app.api.router.lifespan_context(self.app.api)
        self.run(self._lifespan.__aenter__())
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://gateway.test", timeout=60
        )

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.run(self.client.post(path, **kwargs))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.run(self.client.get(path, **kwargs))

    def tiers(self) -> dict[str, dict]:
        return {t["name"]: t for t in self.get("/api/tiers").json()["tiers"]}

    def close(self) -> None:
        try:
            self.run(self.client.aclose())
            self.run(self._lifespan.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
