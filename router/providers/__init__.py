"""Machine providers, one file per backend, behind one interface (`base.Provider`)."""

from __future__ import annotations

from ..config import Config
from .base import Provider


def build_providers(cfg: Config) -> dict[str, Provider]:
    """Only the providers the config uses, so a laptop never imports the cloud SDK."""
    kinds = {inst.provider for tier in cfg.tiers.values() for inst in tier.instances}
    out: dict[str, Provider] = {}
    if "local" in kinds:
        from .local import LocalProvider

        out["local"] = LocalProvider(cfg.data_dir())
    if "static" in kinds:
        from .static import StaticProvider

        out["static"] = StaticProvider()
    if "ecs" in kinds:
        from .ecs import EcsProvider

        out["ecs"] = EcsProvider(cfg.providers.ecs)
    return out
