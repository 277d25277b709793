"""GPU machines on Alibaba Cloud ECS, started and stopped through the ECS API.

Every call goes through the SDK's `*_async` methods so a slow API never blocks the
gateway's event loop, and the SDK's own retry is left off: it sleeps with `time.sleep`
even on the async path. Retrying (throttling, 5xx, network) happens here instead, with
`asyncio.sleep`, exponential backoff and jitter, invisible to the caller.

Credentials come only from the Alibaba credential chain (`alibabacloud_credentials`:
environment, CLI/config profile, ECS RAM role, OIDC, STS); this module never reads,
stores or prints a key, and error text from the API is scrubbed before it is raised.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ..config import EcsSettings, InstanceConfig
from .base import Handle, MachineState, MachineStatus, Misconfigured, NoCapacity, ProviderError, Unreachable

T = TypeVar("T")
Action = Literal["StartInstance", "StopInstance"]

# --- error codes -----------------------------------------------------------------------

RETRYABLE_CODES = frozenset({
    "Throttling", "Throttling.User", "Throttling.Api", "Throttling.Resource", "ServiceUnavailable",
    "InternalError", "UnknownError", "RequestTimeout",
})
NO_CAPACITY_CODES = frozenset({  # plus any code containing "NoStock" or starting with "QuotaExceed"
    "OperationDenied.NoStock", "Zone.NotOnSale", "InvalidResourceType.NotSupported", "Invalid.PrivatePoolOptions.NoStock",
    "LackResource", "InvalidDedicatedHost.NotEnoughResource", "ResourceNotAvailable",
})
NO_CAPACITY_PREFIXES = ("QuotaExceed",)
CREDENTIAL_HINTS = {
    "InvalidAccessKeyId.NotFound": "the AccessKey ID is unknown; check ALIBABA_CLOUD_ACCESS_KEY_ID",
    "InvalidAccessKeyId.Inactive": "the AccessKey is disabled; enable it or create a new one",
    "SignatureDoesNotMatch": "the AccessKey secret does not match its ID; check ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    "IncompleteSignature": "the request signature is incomplete; check the credentials",
    "InvalidSecurityToken.Expired": "the STS token has expired; refresh ALIBABA_CLOUD_SECURITY_TOKEN or use a RAM role",
    "InvalidSecurityToken.Malformed": "the STS token is malformed; check ALIBABA_CLOUD_SECURITY_TOKEN",
    "InvalidSecurityToken.MismatchWithAccessKey": "the STS token does not belong to the AccessKey",
}
NOT_FOUND_CODES = frozenset({"InvalidInstanceId.NotFound", "InvalidInstance.NotFound", "InvalidInstanceIds.NotFound"})
INCORRECT_STATUS = "IncorrectInstanceStatus"
DRY_RUN_OK = "DryRunOperation"
_CONVERGE = frozenset({INCORRECT_STATUS})
_DRY_RUN = frozenset({DRY_RUN_OK, INCORRECT_STATUS})
NO_CREDENTIALS = (
    "no Alibaba Cloud credentials found (set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, "
    "attach a RAM role to this server, or configure a profile / STS token)"
)

_STATES = {
    "Pending": MachineState.STARTING,
    "Starting": MachineState.STARTING,
    "Running": MachineState.RUNNING,
    "Stopping": MachineState.STOPPING,
    "Stopped": MachineState.STOPPED,
}


@dataclass
class ApiError(Exception):
    """A refusal from the ECS API that retrying does not fix, before it is mapped to a ProviderError."""

    code: str
    message: str
    status: int | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


class _Retryable(Exception):
    """Throttling, a 5xx or a network failure: worth another try."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _NoCredentials(Exception):
    """The credential chain found nothing (its own message is not passed on: it may quote config)."""


@dataclass
class _Machine:
    """What DescribeInstances says about one instance."""

    status: MachineStatus
    private_ip: str = ""
    public_ip: str = ""


def _first(values: Any) -> str:
    return str(values[0]) if isinstance(values, list) and values else ""


def _parse_instance(raw: dict[str, Any]) -> _Machine:
    """One `Instances.Instance[]` entry → state, spot reclaim and IPs."""
    status = str(raw.get("Status") or "")
    locks = (raw.get("OperationLocks") or {}).get("LockReason") or []
    reasons = [str(lock.get("LockReason") or "") for lock in locks if isinstance(lock, dict)]
    reclaimed = "Recycling" in reasons
    detail = f"ECS status {status or 'missing'}" + (f", locked: {', '.join(reasons)}" if reasons else "")
    vpc = raw.get("VpcAttributes") or {}
    private_ip = _first((vpc.get("PrivateIpAddress") or {}).get("IpAddress")) or _first(
        (raw.get("InnerIpAddress") or {}).get("IpAddress")
    )
    public_ip = _first((raw.get("PublicIpAddress") or {}).get("IpAddress")) or str(
        (raw.get("EipAddress") or {}).get("IpAddress") or ""
    )
    state = _STATES.get(status, MachineState.UNKNOWN)
    return _Machine(MachineStatus(state, detail=detail, reclaimed=reclaimed), private_ip, public_ip)


# --- the provider ------------------------------------------------------------------------


class EcsProvider:
    """Moves ECS instances; one SDK client per (region, endpoint, protocol), one credential chain for all."""

    kind = "ecs"
    billed = True
    check_every = 30.0  # the cloud API is asked at most this often per instance (its reconcile period)

    def __init__(
        self,
        settings: EcsSettings,
        *,
        credential_client: Any = None,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        wait_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
    ) -> None:
        self.settings = settings
        self.poll_interval = settings.poll_interval  # the lifecycle polls status() this often while booting
        self.retries = max(1, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.wait_timeout = wait_timeout
        self._timeouts_ms = (int(connect_timeout * 1000), int(read_timeout * 1000))
        self._credential = credential_client
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._ips: dict[str, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"EcsProvider(region={self.settings.region!r}, clients={len(self._clients)})"

    # --- per-instance settings ---------------------------------------------------------

    def region(self, inst: InstanceConfig) -> str:
        return inst.region or self.settings.region

    def stopped_mode(self, inst: InstanceConfig, *, standby: bool = False) -> str:
        """KeepCharging restarts faster (the machine is kept), StopCharging stops paying for compute."""
        return "KeepCharging" if standby else inst.stopped_mode or self.settings.stopped_mode

    def reachable(self, handle: Handle) -> bool:
        return True  # the API answers from anywhere

    def dies_with_gateway(self, handle: Handle) -> bool:
        return False

    async def on_gateway_start(self) -> list[str]:
        return []  # nothing host-bound: reconcile finds running machines

    def on_gateway_stop(self) -> None:
        return None  # machines outlive a gateway on purpose; another gateway (or the restart) stops them

    def _key(self, inst: InstanceConfig) -> tuple[str, str, str]:
        return (self.region(inst), inst.endpoint or self.settings.endpoint, inst.protocol or self.settings.protocol)

    def _credentials(self) -> Any:
        """Built on first use: the default chain starts a refresh thread when it includes the ECS RAM role."""
        if self._credential is None:
            from alibabacloud_credentials.client import Client as CredentialClient

            self._credential = CredentialClient()
        return self._credential

    def _client(self, inst: InstanceConfig) -> Any:
        key = self._key(inst)
        if key not in self._clients:
            from alibabacloud_ecs20140526.client import Client as EcsClient
            from alibabacloud_tea_openapi.models import Config as OpenApiConfig

            region, endpoint, protocol = key
            self._clients[key] = EcsClient(OpenApiConfig(
                credential=self._credentials(),
                region_id=region,
                endpoint=endpoint or None,  # None: the SDK picks the region's public endpoint
                protocol=protocol,
                connect_timeout=self._timeouts_ms[0],
                read_timeout=self._timeouts_ms[1],
            ))
        return self._clients[key]

    # --- calling the API ---------------------------------------------------------------

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one API call; retry throttling / 5xx / network with backoff; raise ApiError or _NoCredentials."""
        for attempt in range(1, self.retries + 1):
            try:
                return await call()
            except (ApiError, _NoCredentials, ProviderError):
                raise
            except Exception as exc:  # noqa: BLE001 - the SDK raises several unrelated types
                err = _classify(exc)
            if not isinstance(err, _Retryable):
                raise err
            if attempt == self.retries:
                raise Unreachable(f"ECS API unreachable after {self.retries} tries ({err.reason})")
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
            if err.retry_after is not None:
                delay = min(self.max_backoff, max(delay, err.retry_after))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter, not crypto
        raise AssertionError("unreachable")  # pragma: no cover

    async def _api(
        self, inst: InstanceConfig, action: str, call: Callable[[], Awaitable[T]], *, tolerate: frozenset[str] = frozenset()
    ) -> T | ApiError:
        """`_call` with every failure turned into the ProviderError the lifecycle expects, naming the instance.

        Codes in `tolerate` come back as the ApiError itself, for callers that act on them
        (IncorrectInstanceStatus while converging, DryRunOperation for a dry run).
        """
        try:
            return await self._call(call)
        except ApiError as err:
            if err.code in tolerate:
                return err
            raise await self._translate(inst, action, err) from None
        except _NoCredentials:
            raise Misconfigured(f"{inst.id}: {NO_CREDENTIALS}") from None
        except Unreachable as exc:
            raise Unreachable(f"{inst.id}: {action}: {exc}") from None

    def _send(self, inst: InstanceConfig, action: str, **params: Any) -> Awaitable[Any]:
        from alibabacloud_ecs20140526 import models as ecs

        client = self._client(inst)
        if action == "StartInstance":
            return client.start_instance_async(ecs.StartInstanceRequest(instance_id=inst.instance_id, **params))
        if action == "StopInstance":
            return client.stop_instance_async(ecs.StopInstanceRequest(instance_id=inst.instance_id, **params))
        raise ValueError(f"unknown action {action!r}")

    async def _translate(self, inst: InstanceConfig, action: str, err: ApiError) -> ProviderError:
        """An ECS error code → NoCapacity / Misconfigured / ProviderError, naming the instance."""
        code, where = err.code, f"{inst.id} ({self.region(inst)})"
        message = await self._scrub(err.message)
        if code in NO_CAPACITY_CODES or code.startswith(NO_CAPACITY_PREFIXES) or "NoStock" in code:
            return NoCapacity(f"{where}: no capacity to {action} ({code}): {message}")
        if code in NOT_FOUND_CODES:
            return Misconfigured(f"{where}: no such instance in region {self.region(inst)} ({code}); check instance_id and region")
        if code == "Forbidden.RAM":
            return Misconfigured(f"{inst.id}: the RAM user lacks ecs:{action} (Forbidden.RAM); `tiergate doctor` prints the policy")
        if code.startswith(("Forbidden", "NoPermission")):
            return Misconfigured(f"{inst.id}: ecs:{action} is forbidden ({code}): {message}")
        if code in CREDENTIAL_HINTS:
            return Misconfigured(f"{inst.id}: {CREDENTIAL_HINTS[code]} ({code})")
        if err.status is not None and 400 <= err.status < 500 and code != INCORRECT_STATUS:
            return Misconfigured(f"{where}: {action} refused ({code}): {message}")
        return ProviderError(f"{where}: {action} failed ({code}): {message}")

    async def _scrub(self, text: str) -> str:
        """API messages are echoed into logs and the UI: make sure no credential value rides along."""
        try:
            cred = await self._credentials().get_credential_async()
        except Exception:  # noqa: BLE001 - no credentials: nothing to scrub
            return text
        for secret in (cred.access_key_secret, cred.security_token):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    # --- describing --------------------------------------------------------------------

    async def _describe_raw(self, inst: InstanceConfig, ids: list[str]) -> dict[str, _Machine]:
        """DescribeInstances for up to 100 ids sharing `inst`'s client and region; fills the IP cache."""
        from alibabacloud_ecs20140526 import models as ecs

        request = ecs.DescribeInstancesRequest(region_id=self.region(inst), instance_ids=json.dumps(ids), page_size=100)
        client = self._client(inst)
        response = await self._api(inst, "DescribeInstances", lambda: client.describe_instances_async(request))
        body = response.body.to_map() if response.body is not None else {}
        found: dict[str, _Machine] = {}
        for raw in (body.get("Instances") or {}).get("Instance") or []:
            machine = _parse_instance(raw)
            iid = str(raw.get("InstanceId") or "")
            found[iid] = machine
            if machine.private_ip or machine.public_ip:
                self._ips[iid] = (machine.private_ip, machine.public_ip)
        return found

    def _missing(self, inst: InstanceConfig) -> _Machine:
        detail = f"{inst.instance_id} not found in region {self.region(inst)} (released, or a wrong id or region)"
        return _Machine(MachineStatus(MachineState.UNKNOWN, detail=detail))

    async def _describe_one(self, inst: InstanceConfig) -> _Machine:
        found = await self._describe_raw(inst, [inst.instance_id])
        return found.get(inst.instance_id) or self._missing(inst)

    async def status(self, inst: InstanceConfig, handle: Handle | None = None) -> MachineStatus:
        """A missing instance is reported as UNKNOWN with a detail; acting on it (start) raises Misconfigured."""
        return (await self._describe_one(inst)).status

    async def describe(self, insts: list[InstanceConfig]) -> dict[str, MachineStatus]:
        """Many instances in one DescribeInstances per (client, region), for the reconcile loop; keyed by `inst.id`."""
        groups: dict[tuple[str, str, str], list[InstanceConfig]] = {}
        for inst in insts:
            groups.setdefault(self._key(inst), []).append(inst)
        out: dict[str, MachineStatus] = {}
        for members in groups.values():
            for chunk in (members[i : i + 100] for i in range(0, len(members), 100)):
                found = await self._describe_raw(chunk[0], [inst.instance_id for inst in chunk])
                for inst in chunk:
                    out[inst.id] = (found.get(inst.instance_id) or self._missing(inst)).status
        return out

    # --- the provider interface --------------------------------------------------------

    async def start(self, inst: InstanceConfig) -> Handle:
        """StartInstance; if the machine is mid-transition, wait until a start is accepted or unneeded."""
        self._ips.pop(inst.instance_id, None)  # a StopCharging restart may bring a new public IP
        deadline = time.monotonic() + self.wait_timeout
        while True:
            call = lambda: self._send(inst, "StartInstance")
            if not isinstance(await self._api(inst, "StartInstance", call, tolerate=_CONVERGE), ApiError):
                return {}
            machine = await self._describe_one(inst)
            state = machine.status.state
            if state in (MachineState.STARTING, MachineState.RUNNING):
                return {}  # already on its way up: the same outcome as our start
            if state == MachineState.UNKNOWN:
                raise Misconfigured(f"{inst.id}: cannot start: {machine.status.detail}")
            self._check_deadline(inst, deadline, "become startable", machine.status)
            await asyncio.sleep(self.poll_interval)  # still Stopping: try again once it is Stopped

    async def stop(self, inst: InstanceConfig, handle: Handle | None = None, *, standby: bool = False) -> None:
        """StopInstance in the instance's stopped mode, then wait for Stopped (the moment billing ends)."""
        deadline = time.monotonic() + self.wait_timeout
        accepted = False
        while True:
            if not accepted:
                call = lambda: self._send(inst, "StopInstance", stopped_mode=self.stopped_mode(inst, standby=standby))
                accepted = not isinstance(await self._api(inst, "StopInstance", call, tolerate=_CONVERGE), ApiError)
            machine = await self._describe_one(inst)
            state = machine.status.state
            if state == MachineState.STOPPED:
                self._ips.pop(inst.instance_id, None)
                return
            if state == MachineState.UNKNOWN and inst.instance_id in machine.status.detail:
                return  # released (a reclaimed spot instance): nothing bills any more
            if state == MachineState.STOPPING:
                accepted = True  # ours or someone else's stop is under way: just wait
            elif state == MachineState.STARTING:
                accepted = False  # ECS refuses to stop a starting machine: ask again once it runs
            self._check_deadline(inst, deadline, "stop", machine.status)
            await asyncio.sleep(self.poll_interval)

    def _check_deadline(self, inst: InstanceConfig, deadline: float, what: str, status: MachineStatus) -> None:
        if time.monotonic() > deadline:
            raise ProviderError(
                f"{inst.id}: did not {what} within {self.wait_timeout:.0f}s (last seen: {status.detail or status.state})"
            )

    async def url(self, inst: InstanceConfig, handle: Handle | None = None) -> str:
        """The `url` template with the IPs ECS reports; described again only when the cache lacks one it needs."""
        needs_private, needs_public = "{private_ip}" in inst.url, "{public_ip}" in inst.url
        private_ip, public_ip = self._ips.get(inst.instance_id, ("", ""))
        if (needs_private and not private_ip) or (needs_public and not public_ip):
            await self._describe_one(inst)
            private_ip, public_ip = self._ips.get(inst.instance_id, ("", ""))
        if needs_private and not private_ip:
            raise Misconfigured(f"{inst.id}: the url template needs {{private_ip}} but ECS reports none")
        if needs_public and not public_ip:
            raise Misconfigured(
                f"{inst.id}: the url template needs {{public_ip}} but the instance has no public IP or EIP; "
                "use {private_ip} when the gateway shares the VPC"
            )
        return inst.render(inst.url, private_ip=private_ip, public_ip=public_ip)

    async def dry_run(self, inst: InstanceConfig, action: Action) -> tuple[bool, str]:
        """Is `action` permitted on this instance? ECS answers DryRunOperation when it would be."""
        params: dict[str, Any] = {"dry_run": True}
        if action == "StopInstance":
            params["stopped_mode"] = self.stopped_mode(inst)
        try:
            result = await self._api(inst, action, lambda: self._send(inst, action, **params), tolerate=_DRY_RUN)
        except NoCapacity as exc:
            return True, f"permitted, but: {exc}"  # authorisation is checked before stock
        except ProviderError as exc:
            return False, str(exc)
        if isinstance(result, ApiError) and result.code == INCORRECT_STATUS:
            return True, "permitted (ECS checks permission before status, and only the status refused the dry run)"
        return True, "permitted"

    async def credential_source(self) -> str:
        """Where the chain found credentials (never the values); raises Misconfigured when it found none."""
        try:
            cred = await self._credentials().get_credential_async()
        except Exception:  # noqa: BLE001 - CredentialException, or the metadata service failing
            raise Misconfigured(NO_CREDENTIALS) from None
        return describe_source(str(cred.provider_name or cred.type or ""), bool(cred.security_token))

    async def aclose(self) -> None:
        self._clients.clear()  # the SDK opens one HTTP session per request: nothing long-lived to close


def describe_source(provider_name: str, has_token: bool) -> str:
    """The credential chain's provider name (e.g. `default/env`) as words an admin recognises."""
    name = provider_name.split("/")
    labels = {
        "env": "environment (ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET)",
        "ecs_ram_role": "ECS RAM role (instance metadata)",
        "cli_profile": "config file (~/.aliyun/config.json)",
        "profile": "config file (~/.alibabacloud/credentials.ini)",
        "oidc_role_arn": "OIDC role (ALIBABA_CLOUD_ROLE_ARN)",
        "ram_role_arn": "RAM role ARN (STS AssumeRole)",
        "credentials_uri": "credentials URI (ALIBABA_CLOUD_CREDENTIALS_URI)",
        "static_ak": "AccessKey passed in code",
        "static_sts": "STS token passed in code",
        "access_key": "AccessKey passed in code",
        "sts": "STS token passed in code",
    }
    for part in (p for p in name if p != "default"):
        if part in labels:
            label = labels[part]
            return f"{label} + STS token" if has_token and part == "env" else label
    return provider_name or "unknown source"


def _classify(exc: BaseException) -> BaseException:
    """An SDK exception → ApiError (final), _Retryable (try again) or _NoCredentials."""
    from alibabacloud_credentials.exceptions import CredentialException
    from alibabacloud_tea_openapi.exceptions import AlibabaCloudException, ThrottlingException

    if isinstance(exc, ThrottlingException):
        return _Retryable(exc.code or "Throttling", retry_after=_seconds(exc.retry_after))
    if isinstance(exc, AlibabaCloudException):
        code = str(exc.code or "Unknown")
        status = exc.status_code
        if code in RETRYABLE_CODES or code.startswith("Throttling") or (status is not None and status >= 500):
            return _Retryable(code)
        return ApiError(code, _server_message(exc), status)
    inner = getattr(exc, "inner_exception", None) or exc
    if isinstance(inner, CredentialException):
        return _NoCredentials()
    if isinstance(inner, (OSError, asyncio.TimeoutError)) or type(inner).__name__ == "RetryError":
        return _Retryable(f"network: {type(inner).__name__}: {getattr(inner, 'message', '') or inner}"[:200])
    if isinstance(inner, RuntimeError) and "json" in str(inner).lower():
        return _Retryable("the API answered with something that is not JSON (a proxy or load balancer error page?)")
    if isinstance(exc, ProviderError):
        return exc
    return ApiError(type(inner).__name__, str(inner)[:300])


def _server_message(exc: Any) -> str:
    """The API's message without the SDK's prefix (`code: 403, ... request id: ...`)."""
    data = exc.data if isinstance(exc.data, dict) else {}
    message = str(data.get("Message") or data.get("message") or exc.message or "")
    return message.split(" request id:")[0].strip()[:300]


def _seconds(retry_after: Any) -> float | None:
    """The SDK reports Retry-After in milliseconds."""
    try:
        return float(retry_after) / 1000 if retry_after is not None else None
    except (TypeError, ValueError):
        return None
