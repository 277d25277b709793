"""EcsProvider and `tiergate doctor` against the ECS emulator, through the real Alibaba SDK.

Nothing in the SDK is patched: it signs real requests with credentials it found through
its own default credential chain (environment variables set here), and the emulator on
loopback checks those signatures and answers like ECS, errors included.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from router.config import EcsSettings, InstanceConfig, parse_config
from router.doctor import doctor, ram_policy
from router.providers.base import MachineState, Misconfigured, NoCapacity, Unreachable
from router.providers.ecs import EcsProvider
from tests.conftest import free_port

emulator_mod = pytest.importorskip("tests.ecs_emulator", reason="the ECS emulator is not in this tree")

KEY_ID, SECRET = "LTAIprovidertest01", "provider-test-secret-0001"


def use_env_credentials(monkeypatch: pytest.MonkeyPatch, key_id: str | None, secret: str | None) -> None:
    """Credentials in the environment, where the SDK's chain looks first.

    `alibabacloud_credentials` reads the environment once, at import, into module globals;
    a test that changes the environment afterwards must update those globals too, or the
    chain would keep seeing the first test's values. No other source may answer instead:
    the metadata service, CLI and profile files are switched off the same way.
    """
    from alibabacloud_credentials.utils import auth_util

    for name, value in (("ALIBABA_CLOUD_ACCESS_KEY_ID", key_id), ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(auth_util, "environment_access_key_id", key_id)
    monkeypatch.setattr(auth_util, "environment_access_key_secret", secret)
    monkeypatch.setattr(auth_util, "environment_security_token", None)
    monkeypatch.setattr(auth_util, "environment_ecs_metadata_disabled", "true")
    monkeypatch.setattr(auth_util, "environment_cli_profile_disabled", "true")
    monkeypatch.setattr(auth_util, "environment_credentials_file", "/nonexistent/tiergate-test-credentials.ini")


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    emulator_mod.clear_proxy_env(monkeypatch)  # the SDK honours HTTP(S)_PROXY but not NO_PROXY
    use_env_credentials(monkeypatch, KEY_ID, SECRET)
    with emulator_mod.EcsEmulator(access_key_id=KEY_ID, access_key_secret=SECRET) as emulator:
        yield emulator


@pytest.fixture
def emu_shanghai(emu) -> Iterator:
    """A second region behind its own endpoint, for instances that override region and endpoint."""
    with emulator_mod.EcsEmulator(access_key_id=KEY_ID, access_key_secret=SECRET, region_id="cn-shanghai") as emulator:
        yield emulator


def settings(emulator, **kw) -> EcsSettings:
    return EcsSettings(endpoint=emulator.endpoint, protocol="http", poll_interval=0.02, **kw)


def provider(emulator, **kw) -> EcsProvider:
    return EcsProvider(settings(emulator), backoff=0.01, max_backoff=0.05, wait_timeout=10, **kw)


def ecs(instance_id: str, **kw) -> InstanceConfig:
    return InstanceConfig(provider="ecs", id=instance_id, instance_id=instance_id, url="http://{private_ip}:8000", **kw)


def calls(emulator, action: str) -> list[dict]:
    return [params for name, params in emulator.calls if name == action]


def run(coro):
    return asyncio.run(coro)


async def wait_state(p: EcsProvider, inst: InstanceConfig, state: MachineState, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (await p.status(inst)).state != state:
        assert time.monotonic() < deadline, f"{inst.id} never reached {state}"
        await asyncio.sleep(0.02)


# --- start / status / url / stop ---------------------------------------------------------


def test_start_reports_starting_then_running_and_renders_the_private_ip(emu) -> None:
    emu.add_instance("i-bp1start", private_ip="10.1.2.3", boot_seconds=1.0, stop_seconds=0.1)
    p, inst = provider(emu), ecs("i-bp1start")

    async def scenario() -> tuple[MachineState, MachineState, str]:
        await p.start(inst)
        first = (await p.status(inst)).state
        await wait_state(p, inst, MachineState.RUNNING)
        return first, (await p.status(inst)).state, await p.url(inst)

    first, later, url = run(scenario())
    assert first == MachineState.STARTING
    assert later == MachineState.RUNNING
    assert url == "http://10.1.2.3:8000"
    assert [c["InstanceId"] for c in calls(emu, "StartInstance")] == ["i-bp1start"]


def test_stop_uses_stopcharging_by_default_and_keepcharging_when_the_instance_says_so(emu) -> None:
    emu.add_instance("i-bp1eco", private_ip="10.0.0.1", boot_seconds=0.05, stop_seconds=0.1)
    emu.add_instance("i-bp1keep", private_ip="10.0.0.2", boot_seconds=0.05, stop_seconds=0.1)
    p = provider(emu)
    eco, keep = ecs("i-bp1eco"), ecs("i-bp1keep", stopped_mode="KeepCharging")

    async def scenario() -> None:
        for inst in (eco, keep):
            await p.start(inst)
            await wait_state(p, inst, MachineState.RUNNING)
            await p.stop(inst)  # returns only once ECS says Stopped
            assert (await p.status(inst)).state == MachineState.STOPPED

    run(scenario())
    assert emu.stops == [("i-bp1eco", "StopCharging", False), ("i-bp1keep", "KeepCharging", False)]
    assert emu.instance("i-bp1keep").stopped_mode == "KeepCharging"


def test_stop_of_a_stopped_instance_returns_at_once(emu) -> None:
    emu.add_instance("i-bp1idle", private_ip="10.0.0.3")
    run(provider(emu).stop(ecs("i-bp1idle")))
    assert emu.stops == []


def test_start_while_stopping_waits_and_starts_again(emu) -> None:
    emu.add_instance("i-bp1turn", private_ip="10.0.0.4", status="Stopping", stop_seconds=0.3, boot_seconds=0.05)
    p, inst = provider(emu), ecs("i-bp1turn")
    run(p.start(inst))  # IncorrectInstanceStatus while Stopping: wait for Stopped, then start
    assert emu.instance("i-bp1turn").status in ("Starting", "Running")
    assert ("StartInstance", "IncorrectInstanceStatus") in emu.errors
    assert len(calls(emu, "StartInstance")) >= 2  # refused start(s), then the accepted one


def test_start_of_a_running_instance_is_a_no_op(emu) -> None:
    emu.add_instance("i-bp1twice", private_ip="10.0.0.5", boot_seconds=0.05)
    p, inst = provider(emu), ecs("i-bp1twice")

    async def scenario() -> None:
        await p.start(inst)
        await wait_state(p, inst, MachineState.RUNNING)
        await p.start(inst)  # IncorrectInstanceStatus, and Running: nothing to do
        assert (await p.status(inst)).state == MachineState.RUNNING

    run(scenario())
    assert emu.errors == [("StartInstance", "IncorrectInstanceStatus")]
    assert len(calls(emu, "StartInstance")) == 2


def test_stop_while_starting_waits_until_running_then_stops(emu) -> None:
    emu.add_instance("i-bp1early", private_ip="10.0.0.6", boot_seconds=1.0, stop_seconds=0.1)
    p, inst = provider(emu), ecs("i-bp1early")

    async def scenario() -> None:
        await p.start(inst)
        await p.stop(inst)
        assert (await p.status(inst)).state == MachineState.STOPPED

    run(scenario())
    assert ("StopInstance", "IncorrectInstanceStatus") in emu.errors  # refused while Starting, then retried
    assert [s[0] for s in emu.stops] == ["i-bp1early"]


# --- errors -------------------------------------------------------------------------------


def test_no_stock_is_no_capacity_naming_the_instance(emu) -> None:
    emu.add_instance("i-bp1sold", private_ip="10.0.0.7")
    emu.set_no_stock("i-bp1sold", True)
    with pytest.raises(NoCapacity, match="i-bp1sold") as err:
        run(provider(emu).start(ecs("i-bp1sold")))
    assert "NoStock" in str(err.value)


def test_throttling_is_retried_invisibly(emu) -> None:
    emu.add_instance("i-bp1busy", private_ip="10.0.0.8", boot_seconds=0.05)
    emu.throttle_next(2)
    run(provider(emu).start(ecs("i-bp1busy")))
    assert len(calls(emu, "StartInstance")) == 3
    assert emu.errors == [("StartInstance", "Throttling.User")] * 2
    assert emu.instance("i-bp1busy").status in ("Starting", "Running")


def test_service_unavailable_is_retried_too(emu) -> None:
    emu.add_instance("i-bp1flaky", private_ip="10.0.0.8", boot_seconds=0.05)
    emu.throttle_next(1, "ServiceUnavailable")
    run(provider(emu).start(ecs("i-bp1flaky")))
    assert emu.instance("i-bp1flaky").status in ("Starting", "Running")


def test_unreachable_api_after_retries(emu) -> None:
    closed = EcsSettings(endpoint=f"127.0.0.1:{free_port()}", protocol="http", poll_interval=0.02)
    p = EcsProvider(closed, retries=3, backoff=0.01)
    with pytest.raises(Unreachable, match=r"i-bp1far: StartInstance: .*after 3 tries"):
        run(p.start(ecs("i-bp1far")))


def test_unknown_instance_is_misconfigured(emu) -> None:
    with pytest.raises(Misconfigured, match="i-bp1nothere") as err:
        run(provider(emu).start(ecs("i-bp1nothere")))
    assert "NotFound" in str(err.value)


def test_missing_permission_is_misconfigured_naming_the_action(emu) -> None:
    emu.add_instance("i-bp1locked", private_ip="10.0.0.9")
    emu.deny("StartInstance")
    with pytest.raises(Misconfigured) as err:
        run(provider(emu).start(ecs("i-bp1locked")))
    assert "i-bp1locked" in str(err.value) and "ecs:StartInstance" in str(err.value)
    assert "Forbidden.RAM" in str(err.value)


def test_wrong_secret_is_misconfigured_and_never_echoed(emu, monkeypatch: pytest.MonkeyPatch) -> None:
    emu.add_instance("i-bp1key", private_ip="10.0.0.10")
    wrong = "not-the-right-secret-4242"
    use_env_credentials(monkeypatch, KEY_ID, wrong)
    p = provider(emu)
    with pytest.raises(Misconfigured) as err:
        run(p.start(ecs("i-bp1key")))
    text = str(err.value) + repr(err.value) + repr(p)
    assert "i-bp1key" in text and "SignatureDoesNotMatch" in text
    assert wrong not in text and SECRET not in text


def test_no_credentials_at_all_is_misconfigured(emu, monkeypatch: pytest.MonkeyPatch) -> None:
    emu.add_instance("i-bp1anon", private_ip="10.0.0.11")
    use_env_credentials(monkeypatch, None, None)
    with pytest.raises(Misconfigured, match="i-bp1anon: no Alibaba Cloud credentials found"):
        run(provider(emu).start(ecs("i-bp1anon")))


# --- spot, batch, dry run -------------------------------------------------------------------


def test_spot_reclaim_shows_in_status(emu) -> None:
    emu.add_instance("i-bp1spot", private_ip="10.0.0.12", boot_seconds=0.05, spot=True)
    p, inst = provider(emu), ecs("i-bp1spot", spot=True)

    async def scenario():
        await p.start(inst)
        await wait_state(p, inst, MachineState.RUNNING)
        before = await p.status(inst)
        emu.reclaim("i-bp1spot")
        return before, await p.status(inst)

    before, after = run(scenario())
    assert not before.reclaimed
    assert after.reclaimed and "Recycling" in after.detail


def test_describe_batches_one_call_per_client_and_region(emu, emu_shanghai) -> None:
    emu.add_instance("i-bp1one", private_ip="10.0.1.1", boot_seconds=0.05)
    emu.add_instance("i-bp1two", private_ip="10.0.1.2")
    emu_shanghai.add_instance("i-uf6far", private_ip="10.8.0.1")
    p = provider(emu)
    one, two, ghost = ecs("i-bp1one"), ecs("i-bp1two"), ecs("i-bp1ghost")
    far = ecs("i-uf6far", region="cn-shanghai", endpoint=emu_shanghai.endpoint)

    async def scenario() -> dict:
        await p.start(one)
        await wait_state(p, one, MachineState.RUNNING)
        emu.calls.clear()
        return await p.describe([one, two, ghost, far])

    found = run(scenario())
    assert [name for name, _ in emu.calls] == ["DescribeInstances"]
    assert [name for name, _ in emu_shanghai.calls] == ["DescribeInstances"]
    assert sorted(json.loads(emu.calls[0][1]["InstanceIds"])) == ["i-bp1ghost", "i-bp1one", "i-bp1two"]
    assert emu_shanghai.calls[0][1]["RegionId"] == "cn-shanghai"
    assert found["i-bp1one"].state == MachineState.RUNNING
    assert found["i-bp1two"].state == MachineState.STOPPED
    assert found["i-uf6far"].state == MachineState.STOPPED
    assert found["i-bp1ghost"].state == MachineState.UNKNOWN and "not found" in found["i-bp1ghost"].detail


def test_dry_run_allowed_and_denied(emu) -> None:
    emu.add_instance("i-bp1dry", private_ip="10.0.2.1")
    p, inst = provider(emu), ecs("i-bp1dry")

    async def both() -> tuple[tuple[bool, str], tuple[bool, str]]:
        return await p.dry_run(inst, "StartInstance"), await p.dry_run(inst, "StopInstance")

    start_ok, stop_ok = run(both())
    emu.deny("StopInstance")
    start_still, stop_denied = run(both())
    assert start_ok[0] and stop_ok[0] and start_still[0]
    assert not stop_denied[0]
    assert stop_denied[1] == "i-bp1dry: the RAM user lacks ecs:StopInstance (Forbidden.RAM); `tiergate doctor` prints the policy"
    assert {p.get("DryRun") for p in calls(emu, "StartInstance") + calls(emu, "StopInstance")} == {"True"}
    assert emu.instance("i-bp1dry").status == "Stopped" and emu.stops == []  # a dry run moves nothing


# --- doctor ----------------------------------------------------------------------------------


def doctor_config(instances: list[tuple[str, str, str]]) -> str:
    """A config with one ECS tier; each instance is (instance_id, region, endpoint)."""
    head = '[providers.ecs]\nregion = "cn-hangzhou"\nprotocol = "http"\n\n[tiers.gpu]\ngpu = "RTX 4090D"\nprice_per_hour = 2.8\n'
    body = "".join(
        f'[[tiers.gpu.instances]]\nprovider = "ecs"\ninstance_id = "{iid}"\nregion = "{region}"\n'
        f'endpoint = "{endpoint}"\nurl = "http://{{private_ip}}:8000"\n'
        for iid, region, endpoint in instances
    )
    return head + body


def run_doctor(text: str) -> tuple[str, int]:
    cfg = parse_config(text, "tiers.toml")
    return run(doctor(cfg, provider=EcsProvider(cfg.providers.ecs, backoff=0.01)))


def test_doctor_reports_allowed_and_denied_instances_with_the_policy(emu, emu_shanghai) -> None:
    emu.add_instance("i-bp1allowed", private_ip="10.0.3.1")
    emu_shanghai.add_instance("i-uf6denied", private_ip="10.8.3.2")
    emu_shanghai.deny("StartInstance")  # the RAM policy covers only the Hangzhou instance
    emu_shanghai.deny("StopInstance")
    report, code = run_doctor(doctor_config([
        ("i-bp1allowed", "cn-hangzhou", emu.endpoint), ("i-uf6denied", "cn-shanghai", emu_shanghai.endpoint),
    ]))
    assert code == 1
    assert "Credentials: ok, from environment (ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET)" in report
    rows = {line.split()[0]: line.split()[1:] for line in report.splitlines() if line.startswith("i-")}
    assert rows["i-bp1allowed"] == ["gpu", "cn-hangzhou", "ok", "stopped", "ok", "ok"]
    assert rows["i-uf6denied"] == ["gpu", "cn-shanghai", "ok", "stopped", "FAIL", "FAIL"]
    assert "i-uf6denied: the RAM user lacks ecs:StartInstance (Forbidden.RAM)" in report
    assert "i-uf6denied: the RAM user lacks ecs:StopInstance (Forbidden.RAM)" in report
    policy = json.loads(report[report.index("{") : report.rindex("}") + 1])
    assert policy["Statement"][0] == {
        "Effect": "Allow",
        "Action": ["ecs:StartInstance", "ecs:StopInstance"],
        "Resource": ["acs:ecs:cn-hangzhou:*:instance/i-bp1allowed", "acs:ecs:cn-shanghai:*:instance/i-uf6denied"],
    }
    assert policy["Statement"][1]["Resource"] == "*"
    assert policy == ram_policy([("cn-hangzhou", "i-bp1allowed"), ("cn-shanghai", "i-uf6denied")])
    assert SECRET not in report and KEY_ID not in report
    assert emu.stops == [] and emu_shanghai.stops == []  # dry runs only


def test_doctor_all_good_exits_zero_and_a_missing_instance_fails(emu) -> None:
    emu.add_instance("i-bp1allowed", private_ip="10.0.3.1")
    report, code = run_doctor(doctor_config([("i-bp1allowed", "cn-hangzhou", emu.endpoint)]))
    assert code == 0, report
    assert report.endswith("Result: all checks passed")
    report, code = run_doctor(doctor_config([("i-bp1typo", "cn-hangzhou", emu.endpoint)]))
    assert code == 1
    assert "not found" in report and "InvalidInstanceId.NotFound" in report


def test_doctor_without_credentials(emu, monkeypatch: pytest.MonkeyPatch) -> None:
    emu.add_instance("i-bp1allowed", private_ip="10.0.3.1")
    use_env_credentials(monkeypatch, None, None)
    report, code = run_doctor(doctor_config([("i-bp1allowed", "cn-hangzhou", emu.endpoint)]))
    assert code == 1
    assert "Credentials: NOT FOUND" in report and "ALIBABA_CLOUD_ACCESS_KEY_ID" in report
    assert emu.calls == []  # nothing was sent unsigned


def test_doctor_without_ecs_instances_says_so() -> None:
    cfg = parse_config(
        '[tiers.t]\ngpu = "x"\nprice_per_hour = 1\n[[tiers.t.instances]]\nprovider = "static"\nurl = "http://127.0.0.1:1"\n',
        "tiers.toml",
    )
    report, code = run(doctor(cfg))
    assert code == 0 and report == "No ECS instances are configured in tiers.toml; nothing to check."
