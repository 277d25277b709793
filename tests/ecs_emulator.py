"""A loopback emulator of the Alibaba Cloud ECS API (version 2014-05-26) that the real SDK talks to unmodified.

Why: tiergate drives GPU machines through `alibabacloud_ecs20140526`. Mocking the SDK would only test our
guesses about it; serving its wire protocol instead exercises the real client end to end: request
building, ACS3-HMAC-SHA256 signing, error decoding into `TeaException`s with `.code`, sync and async paths.

    with EcsEmulator("LTAIkey", "secret") as emu:
        emu.add_instance("i-gpu1", boot_seconds=0.3)
        client = Client(Config(access_key_id="LTAIkey", access_key_secret="secret",
                               endpoint=emu.endpoint, protocol="http", region_id="cn-hangzhou"))

Instances live in one region (`region_id`). Lifecycle: Pending -> Stopped, Stopped -> Starting -> Running
(after `boot_seconds`), Running -> Stopping -> Stopped (after `stop_seconds`). Like the cloud:
- StartInstance needs Stopped, StopInstance needs Running; otherwise IncorrectInstanceStatus (403).
- `set_no_stock` only bites instances whose resources were released: stopped in StopCharging (economical)
  mode, or spot. A KeepCharging-stopped instance keeps its GPU and always starts. `add_instance` treats a
  fresh Stopped instance as StopCharging-stopped unless told otherwise.
- StopCharging also releases the (non-EIP) public IP: it is absent from DescribeInstances while stopped.
- `reclaim` (spot only) adds a `Recycling` OperationLock, and after `notice_seconds` stops the instance in
  StopCharging mode (SpotInterruptionBehavior=Stop); the lock is gone once it is Stopped.

Worker hooks: `on_running(instance_id, private_ip)` and `on_stopped(instance_id)` are called when an
instance reaches Running / Stopped (also for one added as Running), in order, from the emulator's clock
thread and outside any lock, so a hook may start or stop a stand-in worker process and may call back into
the emulator. A hook's exception is kept in `hook_errors` and re-raised by `stop()` so it is not lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urlsplit

log = logging.getLogger(__name__)

API_VERSION = "2014-05-26"
SIGN_ALGORITHM = "ACS3-HMAC-SHA256"
MAX_CLOCK_SKEW_SECONDS = 15 * 60  # the gateway refuses requests dated further from its clock
STOPPED_MODES = ("StopCharging", "KeepCharging")
STATUSES = ("Pending", "Starting", "Running", "Stopping", "Stopped")
THROTTLE_ERRORS = {
    "Throttling.User": (400, "Request was denied due to user flow control."),
    "Throttling": (400, "Request was denied due to request throttling."),
    "Throttling.Api": (400, "Request was denied due to api flow control."),
    "ServiceUnavailable": (503, "The request has failed due to a temporary failure of the server."),
}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")

HookRunning = Callable[[str, str], object]
HookStopped = Callable[[str], object]


def clear_proxy_env(monkeypatch: Any) -> None:
    """The SDK sends even loopback calls through HTTP(S)_PROXY (it ignores NO_PROXY): drop them for a test."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


def _cloud_time(epoch: float) -> str:
    """ECS prints times in UTC to the minute, e.g. 2024-01-15T08:30Z."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%MZ")


class ApiError(Exception):
    """An error answer as the cloud sends it: HTTP status, error code, message (and extra body fields)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _incorrect_status(inst: Instance) -> ApiError:
    return ApiError(403, "IncorrectInstanceStatus", f"The current status of the resource does not support this "
                    f"operation. (instance {inst.instance_id} is {inst.status})")


@dataclasses.dataclass
class Instance:
    """One emulated instance: its addresses, status and the timers driving its transitions."""

    instance_id: str
    private_ip: str
    public_ip: str
    status: str = "Stopped"
    spot: bool = False
    boot_seconds: float = 0.5
    stop_seconds: float = 0.2
    stopped_mode: str = "StopCharging"  # how it was last stopped; decides stock-outs and the public IP
    force_stopped: bool = False
    no_stock: bool = False
    instance_type: str = "ecs.gn7i-c8g1.2xlarge"
    locks: list[str] = dataclasses.field(default_factory=list)
    due: float | None = None  # monotonic time the current Pending/Starting/Stopping phase ends
    reclaim_at: float | None = None  # monotonic time a spot reclaim stops it
    creation_time: str = dataclasses.field(default_factory=lambda: _cloud_time(time.time()))
    start_time: str = ""

    def begin_start(self, now: float) -> None:
        self.status, self.due = "Starting", now + self.boot_seconds

    def begin_stop(self, now: float, mode: str, force: bool = False) -> None:
        self.status, self.due, self.reclaim_at = "Stopping", now + self.stop_seconds, None
        self.stopped_mode, self.force_stopped = mode, force

    def advance(self, now: float) -> list[tuple[str, ...]]:
        """Apply every transition due by `now` (timed from when the previous one was due); return hook events."""
        events: list[tuple[str, ...]] = []
        while True:
            if self.status == "Running" and self.reclaim_at is not None and now >= self.reclaim_at:
                self.begin_stop(self.reclaim_at, "StopCharging")
            elif self.due is None or now < self.due:
                return events
            elif self.status == "Pending":
                self.status, self.due = "Stopped", None
            elif self.status == "Starting":
                self.status, self.start_time = "Running", _cloud_time(time.time() - (now - self.due))
                self.due = None
                events.append(("running", self.instance_id, self.private_ip))
            elif self.status == "Stopping":
                self.status, self.due = "Stopped", None
                self.locks = [lock for lock in self.locks if lock != "Recycling"]
                events.append(("stopped", self.instance_id))
            else:
                self.due = None

    def describe(self, region_id: str, zone_id: str) -> dict[str, Any]:
        """The instance as DescribeInstances shows it (the fields a caller is likely to read)."""
        released = self.status == "Stopped" and self.stopped_mode == "StopCharging"
        out: dict[str, Any] = {
            "InstanceId": self.instance_id,
            "InstanceName": self.instance_id,
            "RegionId": region_id,
            "ZoneId": zone_id,
            "Status": self.status,
            "StoppedMode": self.stopped_mode if self.status == "Stopped" else "Not-applicable",
            "InstanceType": self.instance_type,
            "InstanceChargeType": "PostPaid",
            "SpotStrategy": "SpotAsPriceGo" if self.spot else "NoSpot",
            "InstanceNetworkType": "vpc",
            "VpcAttributes": {
                "VpcId": "vpc-emulator",
                "VSwitchId": "vsw-emulator",
                "PrivateIpAddress": {"IpAddress": [self.private_ip]},
                "NatIpAddress": "",
            },
            "PublicIpAddress": {"IpAddress": [self.public_ip] if self.public_ip and not released else []},
            "EipAddress": {"AllocationId": "", "IpAddress": "", "InternetChargeType": ""},
            "OperationLocks": {"LockReason": [{"LockReason": reason} for reason in self.locks]},
            "CreationTime": self.creation_time,
            "StartTime": self.start_time,
            "GPUAmount": 1,
            "GPUSpec": "NVIDIA A10",
            "Cpu": 8,
            "Memory": 30720,
        }
        if self.spot:
            out["SpotInterruptionBehavior"] = "Stop"
        return out


class _Handler(BaseHTTPRequestHandler):
    """Hands each request to the emulator; one connection per request (HTTP/1.0), so stop() leaves none open."""

    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, payload = self.server.emulator.handle(self.command, self.path, self.headers, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-acs-request-id", payload["RequestId"])
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("ecs-emulator: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: EcsEmulator


class EcsEmulator:
    """An ECS endpoint on 127.0.0.1 with scriptable instances; thread-safe. See the module docstring."""

    def __init__(
        self,
        access_key_id: str = "LTAIemulator0001",
        access_key_secret: str = "emulator-secret",
        *,
        region_id: str = "cn-hangzhou",
        zone_id: str | None = None,
        default_stopped_mode: str = "KeepCharging",
        on_running: HookRunning | None = None,
        on_stopped: HookStopped | None = None,
    ) -> None:
        """`default_stopped_mode` is what StopInstance does without StoppedMode (KeepCharging unless the account
        enabled economical mode by default)."""
        self.region_id, self.zone_id = region_id, zone_id or f"{region_id}-i"
        self.default_stopped_mode = default_stopped_mode
        self.on_running, self.on_stopped = on_running, on_stopped
        self.calls: list[tuple[str, dict[str, str]]] = []  # every authenticated call, errors included
        self.errors: list[tuple[str, str]] = []  # (action, code) of every error answer
        self.stops: list[tuple[str, str, bool]] = []  # (instance_id, StoppedMode, ForceStop) per accepted stop
        self.hook_errors: list[BaseException] = []
        self._keys = {access_key_id: access_key_secret}
        self._denied: set[tuple[str | None, str]] = set()  # (access key id or None for all, action)
        self._instances: dict[str, Instance] = {}
        self._throttle: list[str] = []
        self._nonces: set[str] = set()
        self._ips = itertools.count(1)
        self._lock = threading.RLock()
        self._events: queue.SimpleQueue[tuple[str, ...]] = queue.SimpleQueue()
        self._halt = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._actions: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
            "StartInstance": self._start_instance,
            "StopInstance": self._stop_instance,
            "DescribeInstances": self._describe_instances,
            "DescribeInstanceStatus": self._describe_instance_status,
        }

    # --- running the server --------------------------------------------------------------

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve in background threads."""
        if self._server is not None:
            return self
        self._halt.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.emulator = self
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True),
            threading.Thread(target=self._clock, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; re-raise the first exception a hook raised, if any."""
        if self._server is not None:
            self._halt.set()
            self._server.shutdown()
            self._server.server_close()
            for thread in self._threads:
                thread.join(10)
            self._server = None
        if self.hook_errors:
            raise RuntimeError("an emulator hook failed") from self.hook_errors[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """`host:port` for the SDK's `Config(endpoint=..., protocol="http")`."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"127.0.0.1:{self._server.server_address[1]}"

    def _clock(self) -> None:
        """Advance timers even when nobody polls, and run hooks in order, outside the lock."""
        while not self._halt.wait(0.01):
            with self._lock:
                self._advance()
            self._run_hooks()

    def _run_hooks(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            hook: Callable[..., object] | None = self.on_running if event[0] == "running" else self.on_stopped
            if hook is None:
                continue
            try:
                hook(*event[1:])
            except Exception as exc:
                log.exception("ecs-emulator: %s hook failed for %s", event[0], event[1])
                self.hook_errors.append(exc)

    def _advance(self) -> None:
        now = time.monotonic()
        for inst in self._instances.values():
            for event in inst.advance(now):
                self._events.put(event)

    # --- simulation controls -------------------------------------------------------------

    def add_instance(
        self,
        instance_id: str,
        private_ip: str = "127.0.0.1",
        public_ip: str | None = None,
        *,
        status: str = "Stopped",
        spot: bool = False,
        boot_seconds: float = 0.5,
        stop_seconds: float = 0.2,
        stopped_mode: str = "StopCharging",
        instance_type: str = "ecs.gn7i-c8g1.2xlarge",
    ) -> None:
        """Create an instance. `public_ip=None` assigns one, `""` means none; Pending turns Stopped after
        `boot_seconds`; `stopped_mode` is how a Stopped one was stopped."""
        if status not in STATUSES or stopped_mode not in STOPPED_MODES:
            raise ValueError(f"bad status {status!r} or stopped_mode {stopped_mode!r}")
        if public_ip is None:
            n = next(self._ips)
            public_ip = f"47.96.{n // 250}.{n % 250 + 1}"
        inst = Instance(instance_id, private_ip, public_ip, status, spot, boot_seconds, stop_seconds, stopped_mode,
                        instance_type=instance_type)
        now = time.monotonic()
        if status in ("Pending", "Starting"):
            inst.status, inst.due = status, now + boot_seconds
        elif status == "Stopping":
            inst.due = now + stop_seconds
        elif status == "Running":
            inst.start_time = _cloud_time(time.time())
            self._events.put(("running", instance_id, private_ip))
        with self._lock:
            self._instances[instance_id] = inst

    def remove_instance(self, instance_id: str) -> None:
        """Release an instance: from now on it is InvalidInstanceId.NotFound and absent from Describe*."""
        with self._lock:
            self._instances.pop(instance_id)

    def instance(self, instance_id: str) -> Instance:
        """A snapshot (copy) of an instance's current state, for assertions."""
        with self._lock:
            self._advance()
            return dataclasses.replace(self._instances[instance_id], locks=list(self._instances[instance_id].locks))

    def wait_for_status(self, instance_id: str, status: str, timeout: float = 10.0) -> None:
        """Block until the instance has `status`; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.instance(instance_id).status != status:
            if time.monotonic() > deadline:
                raise AssertionError(f"{instance_id} is {self.instance(instance_id).status}, not {status}")
            time.sleep(0.01)

    def set_no_stock(self, instance_id: str, no_stock: bool = True) -> None:
        """Make StartInstance fail with OperationDenied.NoStock for this (StopCharging-stopped or spot) instance."""
        with self._lock:
            self._instances[instance_id].no_stock = no_stock

    def throttle_next(self, n: int = 1, code: str = "Throttling.User") -> None:
        """The next `n` authenticated calls get `code`: Throttling.User / Throttling / Throttling.Api (400),
        ServiceUnavailable (503)."""
        if code not in THROTTLE_ERRORS:
            raise ValueError(f"unknown throttling code {code!r}; one of {sorted(THROTTLE_ERRORS)}")
        with self._lock:
            self._throttle.extend([code] * n)

    def add_key(self, access_key_id: str, access_key_secret: str) -> None:
        """Accept another AccessKey pair (e.g. a second RAM user with fewer permissions)."""
        with self._lock:
            self._keys[access_key_id] = access_key_secret

    def deny(self, action: str, access_key_id: str | None = None) -> None:
        """Answer Forbidden.RAM to `action` for one key (or all keys), dry runs included."""
        with self._lock:
            self._denied.add((access_key_id, action))

    def allow(self, action: str, access_key_id: str | None = None) -> None:
        """Undo `deny` with the same arguments."""
        with self._lock:
            self._denied.discard((access_key_id, action))

    def reclaim(self, instance_id: str, notice_seconds: float = 0.5) -> None:
        """Reclaim a spot instance: `Recycling` lock now, stopped (StopCharging) after `notice_seconds`."""
        with self._lock:
            self._advance()
            inst = self._instances[instance_id]
            if not inst.spot or inst.status != "Running":
                raise ValueError(f"only a Running spot instance can be reclaimed ({instance_id} is {inst.status})")
            inst.locks.append("Recycling")
            inst.reclaim_at = time.monotonic() + notice_seconds

    # --- the wire ------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Message, body: bytes) -> tuple[int, dict[str, Any]]:
        """Authenticate, throttle, authorise and run one call; returns (HTTP status, JSON body)."""
        request_id = str(uuid.uuid4()).upper()
        action = headers.get("x-acs-action", "")
        try:
            url = urlsplit(path)
            query = parse_qsl(url.query, keep_blank_values=True)
            key_id = self._authenticate(method, url.path or "/", query, headers, body)
            if headers.get("x-acs-version") != API_VERSION:
                raise ApiError(400, "InvalidVersion", "Specified parameter Version is not valid.")
            run = self._actions.get(action)
            if run is None:
                raise ApiError(404, "InvalidAction.NotFound", "Specified api is not found, please check your url "
                               "and method.")
            params = dict(query)
            if "x-www-form-urlencoded" in (headers.get("content-type") or ""):
                params.update(parse_qsl(body.decode(), keep_blank_values=True))
            with self._lock:
                self.calls.append((action, dict(params)))
                throttled = self._throttle.pop(0) if self._throttle else None
                denied = {(key_id, action), (None, action)} & self._denied
            if throttled:
                status, message = THROTTLE_ERRORS[throttled]
                raise ApiError(status, throttled, message)
            if denied:
                raise ApiError(403, "Forbidden.RAM", "User not authorized to operate on the specified resource, "
                               "or this API doesn't support RAM.", AccessDeniedDetail={
                                   "AuthAction": f"ecs:{action}", "AuthPrincipalType": "SubUser",
                                   "AuthPrincipalDisplayName": key_id, "NoPermissionType": "ImplicitDeny",
                                   "PolicyType": "AccountLevelIdentityBasedPolicy"})
            return 200, {"RequestId": request_id, **run(params)}
        except ApiError as err:
            with self._lock:
                self.errors.append((action, err.code))
            return err.status, {
                "RequestId": request_id,
                "HostId": f"ecs.{self.region_id}.aliyuncs.com",
                "Code": err.code,
                "Message": err.message,
                "Recommend": f"https://api.aliyun.com/troubleshoot?q={err.code}&product=Ecs&requestId={request_id}",
                **err.extra,
            }

    def _authenticate(self, method: str, path: str, query: list[tuple[str, str]], headers: Message,
                      body: bytes) -> str:
        """Check an ACS3-HMAC-SHA256 request as the API gateway does; return the caller's AccessKey id."""
        scheme, _, rest = (headers.get("Authorization") or "").partition(" ")
        fields = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        key_id, signed, signature = fields.get("Credential"), fields.get("SignedHeaders"), fields.get("Signature")
        if scheme != SIGN_ALGORITHM or not (key_id and signed and signature):
            raise ApiError(400, "IncompleteSignature", "The request signature does not conform to Aliyun standards.")
        with self._lock:
            secret = self._keys.get(key_id)
        if secret is None:
            raise ApiError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        names = signed.split(";")
        unsigned = sorted(({"host"} | {k.lower() for k in headers if k.lower().startswith("x-acs-")}) - set(names))
        if unsigned:  # content-type is not required: aiohttp adds one the SDK never saw
            raise ApiError(400, "IncompleteSignature", f"The request signature does not conform to Aliyun standards. "
                           f"Headers not signed: {', '.join(unsigned)}")
        payload_hash = headers.get("x-acs-content-sha256") or ""
        if not hmac.compare_digest(payload_hash, hashlib.sha256(body).hexdigest()):
            raise ApiError(400, "SignatureDoesNotMatch", "x-acs-content-sha256 does not match the request body.")
        canonical_headers = "".join(
            f"{name}:{','.join(sorted(v.strip() for v in headers.get_all(name) or []))}\n" for name in names
        )
        canonical_query = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted(query))
        canonical = f"{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed}\n{payload_hash}"
        to_sign = f"{SIGN_ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        expected = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise ApiError(400, "SignatureDoesNotMatch", "Specified signature does not match our calculation. "
                           f"server string to sign is:{to_sign}")
        try:
            signed_at = datetime.strptime(headers.get("x-acs-date") or "", "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise ApiError(400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well "
                           "formatted.") from None
        if abs(signed_at.replace(tzinfo=UTC).timestamp() - time.time()) > MAX_CLOCK_SKEW_SECONDS:
            raise ApiError(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
        nonce = headers.get("x-acs-signature-nonce") or ""
        with self._lock:
            if not nonce:
                raise ApiError(400, "MissingSignatureNonce", "SignatureNonce is mandatory for this action.")
            if nonce in self._nonces:
                raise ApiError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
            self._nonces.add(nonce)
        return key_id

    # --- actions -------------------------------------------------------------------------

    def _get(self, params: dict[str, str]) -> Instance:
        """The instance named by InstanceId, its timers advanced; call with the lock held."""
        instance_id = _required(params, "InstanceId")
        self._advance()
        inst = self._instances.get(instance_id)
        if inst is None:
            raise ApiError(404, "InvalidInstanceId.NotFound", "The specified InstanceId does not exist.")
        return inst

    def _start_instance(self, params: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            inst = self._get(params)
            if inst.status != "Stopped":
                raise _incorrect_status(inst)
            _dry_run(params)
            if inst.no_stock and (inst.spot or inst.stopped_mode == "StopCharging"):
                raise ApiError(403, "OperationDenied.NoStock", "Sales of this resource are temporarily suspended "
                               "in the specified region; please try again later.")
            inst.begin_start(time.monotonic())
        return {}

    def _stop_instance(self, params: dict[str, str]) -> dict[str, Any]:
        mode = params.get("StoppedMode") or self.default_stopped_mode
        if mode not in STOPPED_MODES:
            raise ApiError(400, "InvalidParameter", "The specified parameter StoppedMode is not valid.")
        force = _flag(params, "ForceStop")
        with self._lock:
            inst = self._get(params)
            if inst.status != "Running":
                raise _incorrect_status(inst)
            _dry_run(params)
            inst.begin_stop(time.monotonic(), mode, force)
            self.stops.append((inst.instance_id, mode, force))
        return {}

    def _page(self, params: dict[str, str], ids: list[str] | None, max_size: int,
              show: Callable[[Instance], dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """This region's instances (only `ids` if given, only `Status` if given), paged like the cloud pages."""
        region = _required(params, "RegionId")
        number, size = _int(params, "PageNumber", 1, 1 << 31), _int(params, "PageSize", 10, max_size)
        with self._lock:
            self._advance()
            found = [show(i) for i in self._instances.values()
                     if region == self.region_id and (ids is None or i.instance_id in ids)
                     and params.get("Status") in (None, i.status)]
        paging = {"TotalCount": len(found), "PageNumber": number, "PageSize": size}
        return paging, found[(number - 1) * size : number * size]

    def _describe_instances(self, params: dict[str, str]) -> dict[str, Any]:
        ids = None
        if params.get("InstanceIds"):
            try:
                ids = json.loads(params["InstanceIds"])
            except ValueError:
                ids = None
            if not isinstance(ids, list) or len(ids) > 100 or not all(isinstance(i, str) for i in ids):
                raise ApiError(400, "InvalidInstanceIds.Malformed", "The specified parameter InstancesIds is not "
                               "valid.")
        paging, page = self._page(params, ids, 100, lambda i: i.describe(self.region_id, self.zone_id))
        return {**paging, "NextToken": "", "Instances": {"Instance": page}}

    def _describe_instance_status(self, params: dict[str, str]) -> dict[str, Any]:
        listed = sorted((int(m[1]), v) for k, v in params.items() if (m := re.fullmatch(r"InstanceId\.(\d+)", k)))
        paging, page = self._page(params, [v for _, v in listed] or None, 50,
                                  lambda i: {"InstanceId": i.instance_id, "Status": i.status})
        return {**paging, "InstanceStatuses": {"InstanceStatus": page}}


def _required(params: dict[str, str], name: str) -> str:
    if not params.get(name):
        raise ApiError(400, "MissingParameter", f'The input parameter "{name}" that is mandatory for processing '
                       "this request is not supplied.")
    return params[name]


def _flag(params: dict[str, str], name: str) -> bool:
    """Booleans arrive as true/false (the Python SDK sends True/False)."""
    return params.get(name, "").lower() == "true"


def _dry_run(params: dict[str, str]) -> None:
    """A permitted, valid dry run ends here with the cloud's 400 DryRunOperation."""
    if _flag(params, "DryRun"):
        raise ApiError(400, "DryRunOperation", "Request validation has been passed with DryRun flag set.")


def _int(params: dict[str, str], name: str, default: int, maximum: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ApiError(400, "InvalidParameter", f"The specified parameter {name} is not valid.")
    return int(raw)
