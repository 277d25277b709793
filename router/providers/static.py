"""A worker that is always on at a fixed URL: tiergate routes to it but never starts or stops it."""

from __future__ import annotations

from ..config import InstanceConfig
from .base import MachineState, MachineStatus


class StaticProvider:
    kind = "static"

    async def start(self, inst: InstanceConfig) -> None:
        return None

    async def stop(self, inst: InstanceConfig) -> None:
        return None

    async def status(self, inst: InstanceConfig) -> MachineStatus:
        return MachineStatus(MachineState.RUNNING)

    async def url(self, inst: InstanceConfig) -> str:
        return inst.render(inst.url)

    async def aclose(self) -> None:
        return None
