"""The worker process: stop signals, the boot delay, the listening socket, the readiness callback.

A stop signal is honoured at every moment of the process's life with exit status 0: while
Python imports the server (remembered by `cli.catch_signals_early`), while "loading the
model", and while serving (in-flight streams end, then the process exits).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from types import FrameType

import httpx
import uvicorn

from .app import Worker
from .cli import CALLBACK_TOKEN_ENV, FAIL_BOOT_EXIT_CODE, INSTANCE_ID_ENV, STOP_SIGNALS, early_signal

# How long in-flight streams may keep running after SIGTERM before being cut.
GRACEFUL_SHUTDOWN_SECONDS = 3.0
# Ready-callback retries: a real machine keeps trying while the gateway restarts.
READY_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


def _log(message: str) -> None:
    """Print one status line to stderr (stdout stays free for other tools)."""
    print(f"tiergate worker: {message}", file=sys.stderr, flush=True)


class _Stop:
    """Turns SIGTERM/SIGINT into an asyncio event, during boot and while serving.

    A signal that came before this handler existed (while Python imported the server) was
    remembered by `cli.catch_signals_early`; it counts as if it had come now.
    """

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.signal: int | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.handle)
        early = early_signal()  # read after installing: a signal in between is handled, not lost
        if early is not None:
            self.signal = early
            self.event.set()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.event.set)

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a stop signal arrived meanwhile."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout=max(seconds, 0.0))
        except TimeoutError:
            return False
        return True


def _bind(host: str, port: int) -> socket.socket:
    """Open the listening socket ourselves, so the port opens exactly after boot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    # asyncio only sets TCP_NODELAY on sockets whose proto is IPPROTO_TCP, which a socket
    # from create_server() is not; without it, Nagle and delayed ACKs add ~40 ms to every
    # answer (vLLM, bound by uvicorn itself, does not have that delay). Accepted sockets inherit it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


async def announce_ready(url: str, instance_id: str | None, model: str, port: int) -> bool:
    """POST the readiness callback, retrying transient failures; True on a 2xx answer."""
    headers: dict[str, str] = {}
    token = os.environ.get(CALLBACK_TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    else:
        _log(f"warning: {CALLBACK_TOKEN_ENV} is not set; ready callback sent without Authorization")
    body = {"instance_id": instance_id, "model": model, "port": port}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for attempt, delay in enumerate((*READY_RETRY_DELAYS, None), start=1):
            try:
                answer = await client.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if answer.is_success:
                    _log(f"ready callback accepted by {url} (HTTP {answer.status_code})")
                    return True
                problem = f"HTTP {answer.status_code}"
                if answer.status_code < 500:  # the gateway said no; retrying won't help
                    delay = None
            _log(f"ready callback to {url} failed (attempt {attempt}): {problem}")
            if delay is None:
                return False
            await asyncio.sleep(delay)
    return False


async def _main(args: argparse.Namespace) -> int:
    """Boot delay, then serve; see `run`."""
    stop = _Stop()
    instance_id = args.instance_id or os.environ.get(INSTANCE_ID_ENV, "")
    label = f"instance {instance_id}, " if instance_id else ""

    _log(f"loading model {args.model} ({label}simulated, {args.boot_seconds:g} s)")
    if await stop.sleep(args.boot_seconds):
        _log("stopped during boot")
        return 0
    if args.fail_boot:
        _log(f"error: failed to load model {args.model}: simulated boot failure (--fail-boot)")
        return FAIL_BOOT_EXIT_CODE

    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        _log(f"error: cannot listen on {args.host}:{args.port}: {exc}")
        return 1
    port = sock.getsockname()[1]
    worker = Worker(args.model, args.tokens_per_second, instance_id)
    config = uvicorn.Config(
        worker.app(),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = uvicorn.Server(config)
    worker.shutting_down = lambda: server.should_exit
    serving = asyncio.create_task(server.serve(sockets=[sock]))

    async def after_start() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        _log(f"listening on http://{args.host}:{port} (model {args.model}, {label}simulated, no GPU)")
        if args.ready_url:
            await announce_ready(args.ready_url, instance_id or None, args.model, port)

    async def stop_server() -> None:  # covers a signal landing before uvicorn's own handlers
        await stop.event.wait()
        server.should_exit = True

    helpers = [asyncio.create_task(after_start()), asyncio.create_task(stop_server())]
    try:
        await serving
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        sock.close()
    # uvicorn re-raises the signal it caught after restoring our handler, so
    # stop.signal tells a requested shutdown from an unexpected one.
    if stop.signal is None:
        _log("error: server stopped unexpectedly")
        return 1
    if args.stop_seconds:
        _log(f"releasing the model ({args.stop_seconds:g} s)")
        await asyncio.sleep(args.stop_seconds)
    _log("stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    """Boot, serve until SIGTERM/SIGINT, and return the process exit code (0 = clean)."""
    return asyncio.run(_main(args))
