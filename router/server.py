"""The composition root: the gateway, its HTTP API and the front-ends, on one port.

Front-ends (the Gradio UI) are found through the `tiergate.frontends` entry point group
rather than imported, so the engine does not depend on any of them: each is a callable
`mount(app, gateway) -> app` that adds its routes to the API's FastAPI app.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points

from fastapi import FastAPI

from .api import create_app
from .config import Config
from .gateway import Gateway

log = logging.getLogger("tiergate")


def frontends() -> list:
    return [ep.load() for ep in sorted(entry_points(group="tiergate.frontends"), key=lambda ep: ep.name)]


def build_app(cfg: Config) -> FastAPI:
    gateway = Gateway(cfg)
    app = create_app(gateway)
    for mount in frontends():
        app = mount(app, gateway)
    return app


def serve(cfg: Config, host: str, port: int, log_level: str = "info") -> int:
    import uvicorn

    app = build_app(cfg)
    print(f"tiergate: config {cfg.path}, {len(cfg.tiers)} tiers; http://{host}:{port}/", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=15)
    return 0
