"""The ECS emulator, driven by the real Alibaba Cloud SDK (sync and async) over loopback HTTP.

If these pass, the SDK signs, sends and decodes against the emulator exactly as it would against
ECS, so tests built on the emulator (tests/test_ecs_gateway.py) exercise the real client code.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs_models
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.models import Config
from alibabacloud_tea_openapi.utils import Utils
from darabonba.request import DaraRequest
from Tea.exceptions import TeaException

from tests.ecs_emulator import EcsEmulator, clear_proxy_env

KEY_ID, SECRET, REGION = "LTAIemutest0001", "emu-secret-0001", "cn-hangzhou"


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[EcsEmulator]:
    clear_proxy_env(monkeypatch)
    with EcsEmulator(KEY_ID, SECRET, region_id=REGION) as emulator:
        yield emulator


def client(emu: EcsEmulator, key_id: str = KEY_ID, secret: str = SECRET) -> Client:
    return Client(Config(access_key_id=key_id, access_key_secret=secret, endpoint=emu.endpoint, protocol="http",
                         region_id=REGION))


def describe(c: Client, *ids: str) -> list[dict[str, Any]]:
    request = ecs_models.DescribeInstancesRequest(region_id=REGION, instance_ids=json.dumps(list(ids)))
    return c.describe_instances(request).body.to_map()["Instances"]["Instance"]


async def status_async(c: Client, instance_id: str) -> str:
    request = ecs_models.DescribeInstancesRequest(region_id=REGION, instance_ids=json.dumps([instance_id]))
    return (await c.describe_instances_async(request)).body.instances.instance[0].status


def error_of(call: Callable[[], object]) -> TeaException:
    with pytest.raises(TeaException) as info:
        call()
    return info.value


def start(c: Client, instance_id: str, **kw: Any) -> None:
    c.start_instance(ecs_models.StartInstanceRequest(instance_id=instance_id, **kw))


def stop(c: Client, instance_id: str, **kw: Any) -> None:
    c.stop_instance(ecs_models.StopInstanceRequest(instance_id=instance_id, **kw))


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def raw_call(emu: EcsEmulator, action: str, query: dict[str, str], *, sign_query: dict[str, str] | None = None,
             sign: bool = True, date: str | None = None, nonce: str = "n-1") -> tuple[int, dict[str, Any]]:
    """One request signed by the SDK's own signer but sent by hand, to tamper with it."""
    req = DaraRequest()
    req.method, req.pathname, req.query = "POST", "/", dict(sign_query or query)
    req.headers = {"host": emu.endpoint, "x-acs-version": "2014-05-26", "x-acs-action": action,
                   "x-acs-date": date or Utils.get_timestamp(), "x-acs-signature-nonce": nonce,
                   "x-acs-content-sha256": Utils.hash(b"", "ACS3-HMAC-SHA256").hex()}
    if sign:
        req.headers["Authorization"] = Utils.get_authorization(req, "ACS3-HMAC-SHA256", req.headers[
            "x-acs-content-sha256"], KEY_ID, SECRET)
    url = f"http://{emu.endpoint}/?" + "&".join(f"{k}={v}" for k, v in query.items())
    try:
        with urllib.request.urlopen(urllib.request.Request(url, b"", req.headers, method="POST"), timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# --- authentication -------------------------------------------------------------------


def test_signed_call_is_answered_with_the_instance_and_its_addresses(emu: EcsEmulator) -> None:
    emu.add_instance("i-a", private_ip="10.0.0.5", public_ip="47.96.1.2", status="Running")
    emu.add_instance("i-spot", spot=True)
    emu.add_instance("i-other")
    a, spot = describe(client(emu), "i-a", "i-spot", "i-unknown")
    assert (a["InstanceId"], a["Status"], a["StoppedMode"]) == ("i-a", "Running", "Not-applicable")
    assert a["VpcAttributes"]["PrivateIpAddress"]["IpAddress"] == ["10.0.0.5"]
    assert a["PublicIpAddress"]["IpAddress"] == ["47.96.1.2"]
    assert (a["InstanceChargeType"], a["SpotStrategy"], a["OperationLocks"]["LockReason"]) == ("PostPaid", "NoSpot", [])
    assert (spot["Status"], spot["StoppedMode"], spot["SpotStrategy"]) == ("Stopped", "StopCharging", "SpotAsPriceGo")
    assert spot["PublicIpAddress"]["IpAddress"] == []  # released by the economical-mode stop
    assert emu.calls == [("DescribeInstances", {"RegionId": REGION, "InstanceIds": '["i-a", "i-spot", "i-unknown"]'})]


def test_wrong_secret_is_signature_does_not_match(emu: EcsEmulator) -> None:
    emu.add_instance("i-a")
    err = error_of(lambda: start(client(emu, secret="not-the-secret"), "i-a"))
    assert (err.code, err.status_code) == ("SignatureDoesNotMatch", 400)
    assert emu.instance("i-a").status == "Stopped" and emu.calls == []


def test_unknown_access_key_is_not_found(emu: EcsEmulator) -> None:
    err = error_of(lambda: describe(client(emu, key_id="LTAInobody"), "i-a"))
    assert (err.code, err.status_code) == ("InvalidAccessKeyId.NotFound", 404)


def test_a_second_key_is_accepted_once_added(emu: EcsEmulator) -> None:
    assert error_of(lambda: describe(client(emu, "LTAIsecond", "s2"))).code == "InvalidAccessKeyId.NotFound"
    emu.add_key("LTAIsecond", "s2")
    assert describe(client(emu, "LTAIsecond", "s2")) == []


def test_unsigned_tampered_stale_and_replayed_requests_are_refused(emu: EcsEmulator) -> None:
    emu.add_instance("i-a")
    emu.add_instance("i-b")
    assert raw_call(emu, "StartInstance", {"InstanceId": "i-a"}, sign=False)[1]["Code"] == "IncompleteSignature"
    status, body = raw_call(emu, "StartInstance", {"InstanceId": "i-b"}, sign_query={"InstanceId": "i-a"})
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")  # the query is covered by the signature
    stale = raw_call(emu, "StartInstance", {"InstanceId": "i-a"}, date="2020-01-01T00:00:00Z", nonce="n-0")
    assert stale[1]["Code"] == "InvalidTimeStamp.Expired"
    status, body = raw_call(emu, "StartInstance", {"InstanceId": "i-a"})
    assert status == 200 and set(body) == {"RequestId"}
    status, body = raw_call(emu, "StartInstance", {"InstanceId": "i-a"})  # same nonce again
    assert (status, body["Code"]) == (400, "SignatureNonceUsed")
    assert set(body) == {"RequestId", "HostId", "Code", "Message", "Recommend"}
    assert emu.instance("i-b").status == "Stopped" and emu.calls == [("StartInstance", {"InstanceId": "i-a"})]


# --- lifecycle ------------------------------------------------------------------------


def test_start_goes_through_starting_to_running_after_the_boot_delay_async(emu: EcsEmulator) -> None:
    running: list[tuple[str, str]] = []
    emu.on_running = lambda iid, ip: running.append((iid, ip))
    emu.add_instance("i-a", private_ip="10.0.0.7", boot_seconds=0.3)
    c = client(emu)

    async def scenario() -> tuple[str, float]:
        began = time.monotonic()
        await c.start_instance_async(ecs_models.StartInstanceRequest(instance_id="i-a"))
        first = await status_async(c, "i-a")
        while await status_async(c, "i-a") != "Running":
            await asyncio.sleep(0.02)
        return first, time.monotonic() - began

    first, took = asyncio.run(scenario())
    assert first == "Starting" and 0.3 <= took < 2
    wait_until(lambda: running)
    assert running == [("i-a", "10.0.0.7")]
    statuses = c.describe_instance_status(ecs_models.DescribeInstanceStatusRequest(region_id=REGION, instance_id=["i-a"]))
    assert statuses.body.to_map()["InstanceStatuses"]["InstanceStatus"] == [{"InstanceId": "i-a", "Status": "Running"}]


@pytest.mark.parametrize("mode", ["StopCharging", "KeepCharging"])
def test_stop_records_the_stopped_mode_and_reaches_stopped_async(emu: EcsEmulator, mode: str) -> None:
    stopped: list[str] = []
    emu.on_stopped = stopped.append
    emu.add_instance("i-a", public_ip="47.96.9.9", status="Running", stop_seconds=0.2)
    c = client(emu)
    asyncio.run(c.stop_instance_async(ecs_models.StopInstanceRequest(instance_id="i-a", stopped_mode=mode)))
    assert asyncio.run(status_async(c, "i-a")) == "Stopping" and stopped == []
    wait_until(lambda: stopped == ["i-a"])
    (inst,) = describe(c, "i-a")
    assert (inst["Status"], inst["StoppedMode"]) == ("Stopped", mode)
    assert inst["PublicIpAddress"]["IpAddress"] == ([] if mode == "StopCharging" else ["47.96.9.9"])
    assert emu.stops == [("i-a", mode, False)] and emu.calls[0] == ("StopInstance", {"InstanceId": "i-a",
                                                                                    "StoppedMode": mode})


def test_stop_without_a_mode_uses_the_default_and_force_stop_is_recorded(emu: EcsEmulator) -> None:
    emu.add_instance("i-a", status="Running", stop_seconds=0)
    stop(client(emu), "i-a", force_stop=True)
    assert emu.stops == [("i-a", "KeepCharging", True)]
    assert emu.instance("i-a").stopped_mode == "KeepCharging"


def test_transitions_in_progress_refuse_start_and_stop(emu: EcsEmulator) -> None:
    emu.add_instance("i-a", boot_seconds=5, stop_seconds=5)
    c = client(emu)
    assert error_of(lambda: stop(c, "i-a")).code == "IncorrectInstanceStatus"  # already Stopped
    start(c, "i-a")
    for call in (lambda: start(c, "i-a"), lambda: stop(c, "i-a")):  # Starting
        err = error_of(call)
        assert (err.code, err.status_code) == ("IncorrectInstanceStatus", 403)
    emu.add_instance("i-run", status="Running", stop_seconds=5)
    assert error_of(lambda: start(c, "i-run")).code == "IncorrectInstanceStatus"  # Running
    stop(c, "i-run")
    assert error_of(lambda: stop(c, "i-run")).code == "IncorrectInstanceStatus"  # Stopping
    assert [i["Status"] for i in describe(c, "i-a", "i-run")] == ["Starting", "Stopping"]


def test_no_stock_refuses_economical_mode_starts_but_not_keep_charging_ones(emu: EcsEmulator) -> None:
    emu.add_instance("i-cheap", stopped_mode="StopCharging", boot_seconds=0)
    emu.add_instance("i-kept", stopped_mode="KeepCharging", boot_seconds=0)
    emu.set_no_stock("i-cheap")
    emu.set_no_stock("i-kept")
    c = client(emu)
    err = error_of(lambda: start(c, "i-cheap"))
    assert (err.code, err.status_code) == ("OperationDenied.NoStock", 403)
    start(c, "i-kept")  # its GPU was never given back
    emu.set_no_stock("i-cheap", False)
    start(c, "i-cheap")
    assert [i["Status"] for i in describe(c, "i-cheap", "i-kept")] == ["Running", "Running"]
    assert emu.errors == [("StartInstance", "OperationDenied.NoStock")]


def test_throttling_answers_the_next_calls_then_recovers(emu: EcsEmulator) -> None:
    emu.add_instance("i-a")
    c = client(emu)
    emu.throttle_next(2)
    for _ in range(2):
        err = error_of(lambda: describe(c, "i-a"))
        assert (err.code, err.status_code) == ("Throttling.User", 400)
    assert describe(c, "i-a")[0]["InstanceId"] == "i-a"
    emu.throttle_next(1, "ServiceUnavailable")
    err = error_of(lambda: start(c, "i-a"))
    assert (err.code, err.status_code) == ("ServiceUnavailable", 503)
    assert emu.instance("i-a").status == "Stopped"


def test_unknown_instance_is_not_found_for_actions_and_absent_from_describe(emu: EcsEmulator) -> None:
    c = client(emu)
    for call in (lambda: start(c, "i-nope"), lambda: stop(c, "i-nope")):
        err = error_of(call)
        assert (err.code, err.status_code) == ("InvalidInstanceId.NotFound", 404)
    assert describe(c, "i-nope") == []
    emu.add_instance("i-gone")
    emu.remove_instance("i-gone")
    assert error_of(lambda: start(c, "i-gone")).code == "InvalidInstanceId.NotFound"


def test_unsupported_action_and_missing_region_are_refused(emu: EcsEmulator) -> None:
    c = client(emu)
    err = error_of(lambda: c.reboot_instance(ecs_models.RebootInstanceRequest(instance_id="i-a")))
    assert (err.code, err.status_code) == ("InvalidAction.NotFound", 404)
    err = error_of(lambda: c.describe_instances(ecs_models.DescribeInstancesRequest()))
    assert (err.code, err.status_code) == ("MissingParameter", 400)


def test_dry_run_passes_when_permitted_and_is_forbidden_when_denied(emu: EcsEmulator) -> None:
    emu.add_instance("i-a")
    emu.add_instance("i-run", status="Running")
    c = client(emu)
    for call in (lambda: start(c, "i-a", dry_run=True), lambda: stop(c, "i-run", dry_run=True)):
        err = error_of(call)
        assert (err.code, err.status_code) == ("DryRunOperation", 400)
    assert [i["Status"] for i in describe(c, "i-a", "i-run")] == ["Stopped", "Running"]  # nothing happened
    emu.deny("StartInstance")
    for call in (lambda: start(c, "i-a", dry_run=True), lambda: start(c, "i-a")):
        err = error_of(call)
        assert (err.code, err.status_code) == ("Forbidden.RAM", 403)
        assert err.data["AccessDeniedDetail"]["AuthAction"] == "ecs:StartInstance"
    err = error_of(lambda: stop(c, "i-run", dry_run=True))
    assert err.code == "DryRunOperation"  # only StartInstance was denied
    emu.allow("StartInstance")
    start(c, "i-a")
    assert emu.instance("i-a").status == "Starting"


def test_deny_can_target_one_access_key(emu: EcsEmulator) -> None:
    emu.add_key("LTAIreadonly", "ro")
    emu.deny("StopInstance", "LTAIreadonly")
    emu.add_instance("i-run", status="Running")
    assert error_of(lambda: stop(client(emu, "LTAIreadonly", "ro"), "i-run")).code == "Forbidden.RAM"
    stop(client(emu), "i-run")
    assert emu.stops == [("i-run", "KeepCharging", False)]


def test_spot_reclaim_shows_a_recycling_lock_then_stops_async(emu: EcsEmulator) -> None:
    stopped: list[str] = []
    emu.on_stopped = stopped.append
    emu.add_instance("i-spot", spot=True, status="Running", stop_seconds=0.1)
    c = client(emu)
    emu.reclaim("i-spot", notice_seconds=0.3)
    request = ecs_models.DescribeInstancesRequest(region_id=REGION, instance_ids='["i-spot"]')
    (seen,) = asyncio.run(c.describe_instances_async(request)).body.to_map()["Instances"]["Instance"]
    assert seen["Status"] == "Running" and seen["OperationLocks"]["LockReason"] == [{"LockReason": "Recycling"}]
    wait_until(lambda: stopped == ["i-spot"])
    (seen,) = describe(c, "i-spot")
    assert (seen["Status"], seen["StoppedMode"], seen["OperationLocks"]["LockReason"]) == ("Stopped",
                                                                                          "StopCharging", [])
    start(c, "i-spot")  # a reclaimed spot instance can be started again (stock permitting)
    emu.add_instance("i-ondemand", status="Running")
    with pytest.raises(ValueError):
        emu.reclaim("i-ondemand")


def test_describe_pages_and_filters_by_region(emu: EcsEmulator) -> None:
    for n in range(3):
        emu.add_instance(f"i-{n}")
    c = client(emu)
    pages = [c.describe_instances(ecs_models.DescribeInstancesRequest(region_id=REGION, page_size=2, page_number=n))
             .body.to_map() for n in (1, 2)]
    assert [p["TotalCount"] for p in pages] == [3, 3]
    assert [[i["InstanceId"] for i in p["Instances"]["Instance"]] for p in pages] == [["i-0", "i-1"], ["i-2"]]
    other = c.describe_instances(ecs_models.DescribeInstancesRequest(region_id="cn-beijing")).body
    assert other.total_count == 0 and other.instances.instance == []
