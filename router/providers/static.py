"""A worker that is always on at a fixed URL: tiergate routes to it but never starts, stops or bills it."""

from __future__ import annotations

from ..config import InstanceConfig
from .base import Handle, MachineState, MachineStatus


class StaticProvider:
    kind = "static"
    billed = False
    poll_interval = 0.25
    check_every = 3600.0  # nothing to compare: it is always on

    def reachable(self, handle: Handle) -> bool:
        return True

    def dies_with_gateway(self, handle: Handle) -> bool:
        return False

    async def on_gateway_start(self) -> list[str]:
        return []

    def on_gateway_stop(self) -> None:
        return None

    async def start(self, inst: InstanceConfig) -> Handle:
        return {}

    async def stop(self, inst: InstanceConfig, handle: Handle, *, standby: bool = False) -> None:
        return None

    async def status(self, inst: InstanceConfig, handle: Handle) -> MachineStatus:
        return MachineStatus(MachineState.RUNNING)

    async def url(self, inst: InstanceConfig, handle: Handle) -> str:
        return inst.render(inst.url)

    async def aclose(self) -> None:
        return None
