"""The one interface every machine provider implements (local process, fixed URL, ECS).

A provider only moves machines; it never decides *when*. Deciding belongs to `decide.py`
and carrying it out to `lifecycle.py`, which calls these methods under the tier's lock.
What differs between providers is said by the provider itself (its capabilities below),
so the lifecycle never asks which kind of provider it holds.

Start is asynchronous on purpose: a cloud accepts a start in a second and boots for a
minute, and readiness is judged by the worker's health, not by the provider. A start
returns a *handle*, the provider's own record of the machine (a process id, a port), which
the lifecycle keeps in shared state so any gateway can later ask about or stop the machine.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from ..config import InstanceConfig

Handle = dict  # JSON-able: what a provider needs to find its machine again


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
    billed: bool  # tiergate starts, stops and bills its machines (a fixed URL is always on: not billed)
    poll_interval: float  # seconds between status() calls while a machine boots
    check_every: float  # seconds between the supervisor's comparisons of machine and shared state

    def reachable(self, handle: Handle) -> bool:
        """Can this gateway see and move the machine behind `handle`? (A process on another host: no.)"""
        ...

    def dies_with_gateway(self, handle: Handle) -> bool:
        """Does the machine behind `handle` end with this gateway process (so it must stop it first)?"""
        ...

    async def on_gateway_start(self) -> list[str]:
        """Clean up after a gateway of this host that died; returns the instance ids it killed."""
        ...

    def on_gateway_stop(self) -> None:
        """Synchronously, at exit: nothing this process started may outlive it."""
        ...

    async def start(self, inst: InstanceConfig) -> Handle:
        """Ask the machine to start; returns once the request is accepted (idempotent)."""
        ...

    async def stop(self, inst: InstanceConfig, handle: Handle, *, standby: bool = False) -> None:
        """Stop the machine and return once it no longer bills compute (idempotent).

        `standby`: the provider's cheaper-to-restart stop, where it has one (ECS KeepCharging).
        """
        ...

    async def status(self, inst: InstanceConfig, handle: Handle) -> MachineStatus:
        """What the machine is doing now, as the provider sees it."""
        ...

    async def url(self, inst: InstanceConfig, handle: Handle) -> str:
        """The worker's base URL (may need the machine's current IP, or the port chosen at start)."""
        ...

    async def aclose(self) -> None: ...
