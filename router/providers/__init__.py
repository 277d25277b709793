"""Machine providers, one file per backend, behind one interface (`base.Provider`)."""

from __future__ import annotations

import importlib

from ..config import Config, EcsSettings
from .base import Provider

_CLASSES = {"local": ".local:LocalProvider", "static": ".static:StaticProvider", "ecs": ".ecs:EcsProvider"}


def provider_class(kind: str) -> type:
    """Imported on first use, so a laptop never imports the cloud SDK."""
    module, _, name = _CLASSES[kind].partition(":")
    return getattr(importlib.import_module(module, __name__), name)


def kinds(cfg: Config) -> set[str]:
    return {inst.provider for tier in cfg.tiers.values() for inst in tier.instances}


def billed(cfg: Config) -> dict[str, bool]:
    """Which kinds of machine tiergate bills, read from the providers themselves (none is built)."""
    return {kind: provider_class(kind).billed for kind in kinds(cfg)}


def build_providers(cfg: Config, ecs: EcsSettings | None = None) -> dict[str, Provider]:
    """Only the providers the config uses."""
    out: dict[str, Provider] = {}
    for kind in kinds(cfg):
        cls = provider_class(kind)
        if kind == "local":
            out[kind] = cls(cfg.data_dir())
        elif kind == "ecs":
            out[kind] = cls(ecs or cfg.providers.ecs)
        else:
            out[kind] = cls()
    return out
