"""The one interface every machine provider implements (local process, fixed URL, ECS).

A provider only moves machines; it never decides *when*. Deciding belongs to the tier
lifecycle (`router/lifecycle.py`), which calls these methods under the tier's lock.
Start is asynchronous on purpose: a cloud accepts a start in a second and boots for a
minute, and readiness is judged by the worker's health, not by the provider.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from ..config import InstanceConfig


class MachineState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class MachineStatus:
    state: MachineState
    detail: str = ""
    reclaimed: bool = False  # a spot instance taken back by the cloud


class ProviderError(Exception):
    """A provider refused or failed; the subclass says what the lifecycle should do."""


class NoCapacity(ProviderError):
    """No stock / quota for this machine right now: try the next instance, then the fallback tier."""


class Misconfigured(ProviderError):
    """Wrong instance id, missing permission, bad credentials: retrying cannot help."""


class Unreachable(ProviderError):
    """The provider's API could not be reached after retries."""


class Provider(Protocol):
    kind: str

    async def start(self, inst: InstanceConfig) -> None:
        """Ask the machine to start; returns once the request is accepted (idempotent)."""
        ...

    async def stop(self, inst: InstanceConfig) -> None:
        """Stop the machine and return once it no longer bills compute (idempotent)."""
        ...

    async def status(self, inst: InstanceConfig) -> MachineStatus:
        """What the machine is doing now, as the provider sees it."""
        ...

    async def url(self, inst: InstanceConfig) -> str:
        """The worker's base URL (may need the machine's current IP)."""
        ...

    async def aclose(self) -> None: ...
