"""The composition root: the gateway, its HTTP API and the front-ends, on one port.

Front-ends (the Gradio UI) are found through the `tiergate.frontends` entry point group
rather than imported, so the engine does not depend on any of them: each is a callable
`mount(app, gateway) -> app` that adds its routes to the API's FastAPI app.

`--workers N` grows one host past one core: N gateway processes share one embedded Redis
(started here, before them) and one cache, and all accept connections on the one port
(SO_REUSEPORT: the kernel spreads connections over them). The UI stays in process 0,
because Gradio keeps each session's queue in the memory of one process; the others pass
UI requests on to it over a private unix socket (`proxy.py`) and answer the API themselves.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

from .api import Front, create_app
from .config import Config, load_config
from .gateway import Gateway

log = logging.getLogger("tiergate")
RESTART_BACKOFF = 2.0  # seconds before a gateway process that died is started again


def frontends() -> list:
    return [ep.load() for ep in sorted(entry_points(group="tiergate.frontends"), key=lambda ep: ep.name)]


def build_app(cfg: Config, *, ui: bool = True, ui_via: str = "", pool_token: str = "") -> Front:
    """The API plus the front-ends (unless `ui` is off), or plus a pass-through to the process that serves them."""
    gateway = Gateway(cfg)
    app = create_app(gateway, pool_token)
    if not ui:
        return app
    if ui_via:
        from .proxy import mount_proxy

        app.api = mount_proxy(app.api, ui_via, pool_token)
        return app
    for mount in frontends():
        app.api = mount(app.api, gateway)
    return app


def _server_options() -> dict:
    """uvloop and httptools when installed: the same server, a faster event loop and HTTP parser."""
    import importlib.util

    opts: dict = {"timeout_graceful_shutdown": 15}
    if importlib.util.find_spec("uvloop"):
        opts["loop"] = "uvloop"
    if importlib.util.find_spec("httptools"):
        opts["http"] = "httptools"
    return opts


def serve(
    cfg: Config, host: str, port: int, log_level: str = "info", workers: int = 1, access_log: bool = False,
    ui: bool = True,
) -> int:
    import uvicorn

    print(f"tiergate: config {cfg.path}, {len(cfg.tiers)} tiers; http://{host}:{port}/"
          + (f" ({workers} gateway processes)" if workers > 1 else ""), file=sys.stderr)
    if workers <= 1:
        app = build_app(cfg, ui=ui)
        _settle()
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, **_server_options())
        return 0
    return _pool(cfg, host, port, log_level, workers, access_log, ui)


# --- several gateway processes on one port --------------------------------------------------


def _pool(cfg: Config, host: str, port: int, log_level: str, workers: int, access_log: bool, ui: bool) -> int:
    from .redis_server import open_redis

    redis = None
    redis_url = cfg.redis_url()
    if not redis_url:  # one embedded Redis for all of them, owned by this process
        redis = open_redis(cfg)
        redis_url = redis.url
    ui_socket = str(cfg.data_dir() / f"ui-{os.getpid()}.sock")
    token = secrets.token_hex(16)
    ctx = multiprocessing.get_context("spawn")
    args = (cfg.path, host, port, log_level, access_log, ui, ui_socket, token, redis_url)
    procs = {i: ctx.Process(target=_child, args=(i, *args), name=f"tiergate-{i}") for i in range(workers)}
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs.values():
        p.start()
    try:
        while not stopping:
            time.sleep(0.5)
            for i, p in list(procs.items()):
                if not p.is_alive() and not stopping:
                    log.error("gateway process %d exited with %s; starting it again", i, p.exitcode)
                    time.sleep(RESTART_BACKOFF)
                    procs[i] = ctx.Process(target=_child, args=(i, *args), name=f"tiergate-{i}")
                    procs[i].start()
        for p in procs.values():
            p.join(30)
            if p.is_alive():
                p.kill()
    finally:
        Path(ui_socket).unlink(missing_ok=True)
        if redis is not None:
            import asyncio

            asyncio.run(redis.aclose())
    return 0


def _child(index: int, config_path: str, host: str, port: int, log_level: str, access_log: bool, ui: bool,
           ui_socket: str, token: str, redis_url: str) -> None:
    """One gateway process of the pool; process 0 serves the UI (also on the private socket)."""
    import uvicorn

    with contextlib.suppress(Exception):  # die with the pool's parent, whatever kills it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [{index}] %(name)s: %(message)s")
    os.environ["TIERGATE_REDIS_URL"] = redis_url
    cfg = load_config(config_path or None)
    sockets = [_reuseport(host, port)]
    if not ui:
        app = build_app(cfg, ui=False)
    elif index == 0:
        Path(ui_socket).unlink(missing_ok=True)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(ui_socket)
        os.chmod(ui_socket, 0o600)
        sockets.append(unix)
        app = build_app(cfg, pool_token=token)
    else:
        app = build_app(cfg, ui_via=ui_socket, pool_token=token)
    _settle()
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log, **_server_options()))
    server.run(sockets=sockets)


def _settle() -> None:
    """After building the app: the garbage collector stops walking its ~million long-lived objects
    (Gradio's), so a collection during a request takes microseconds, not milliseconds (the p99)."""
    gc.collect()
    gc.freeze()


def _reuseport(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock
