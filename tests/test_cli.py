"""The commands people run by hand: status, doctor, hash-password, api-key.

Each runs the real `tiergate` command in a subprocess where the behaviour is about the
process (what it leaves running, what it prints on which stream, how it reads a terminal).
State is written by the gateway's own code (`open_redis` + `State`) into a real embedded
Redis, exactly where a gateway with the same config keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from router.apikeys import verify_hash
from router.config import load_config
from router.ledger import Ledger
from router.redis_server import RedisHandle, open_redis

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """\
[gateway]
data_dir = "{data_dir}"
{extra}

[tiers.light]
gpu = "RTX 3060"
price_per_hour = 1.0

[[tiers.light.instances]]
provider = "local"
port = 1
command = ["tiergate", "worker", "--port", "{{port}}"]
url = "http://127.0.0.1:{{port}}"
"""


def tiergate(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: object = subprocess.DEVNULL,
             **kw: object) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd), "TMPDIR": str(cwd), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args], cwd=cwd, env=base | (env or {}), stdin=stdin,
        capture_output=True, text=True, timeout=120, check=False, **kw,
    )


def redis_servers_under(folder: Path) -> set[int]:
    """Live redis-server processes working in `folder` (a server chdirs to its data dir); Linux /proc."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            alive = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            if (
                alive
                and (proc / "comm").read_text().startswith("redis-server")
                and Path(os.readlink(proc / "cwd")).is_relative_to(folder)
            ):
                found.add(int(proc.name))
    return found


def write_config(folder: Path, data_dir: Path | str, extra: str = "") -> Path:
    path = folder / "tiers.toml"
    path.write_text(CONFIG.format(data_dir=data_dir, extra=extra))
    return path


async def record_starts(config: Path, starts: int, *, keep_running: bool = False) -> RedisHandle | None:
    """What a gateway leaves in its embedded Redis after `starts` starts of `light`."""
    cfg = load_config(str(config))
    handle = open_redis(cfg)
    ledger = Ledger(handle.client)
    await ledger.epoch()
    for _ in range(starts):
        await ledger.count_start("light")
    if keep_running:
        return handle
    await handle.aclose()  # a gateway stopping: the embedded server saves and exits
    return None


def starts_column(table: str) -> str:
    head, light = table.splitlines()[:2]
    return light.split()[head.split().index("STARTS") - 1]  # "IN FLIGHT" is two header words


# --- status ---------------------------------------------------------------------------------


def test_status_where_no_gateway_ran_says_so_and_creates_nothing(tmp_path: Path) -> None:
    res = tiergate("status", cwd=tmp_path)  # the packaged default config: data_dir ./.tiergate
    assert res.returncode == 1
    assert res.stdout == ""
    assert f"no gateway has kept state in {tmp_path}/.tiergate" in res.stderr
    assert "tiergate serve" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no ./.tiergate, no redis temp dir
    assert redis_servers_under(tmp_path) == set()


def test_status_after_the_gateway_stopped_reads_the_saved_state_and_leaves_nothing_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    config = write_config(tmp_path, data_dir)
    asyncio.run(record_starts(config, 3))
    before = {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()}

    res = tiergate("status", "--config", str(config), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert starts_column(res.stdout) == "3"
    assert "no gateway is running" in res.stderr
    assert redis_servers_under(tmp_path) == set()  # each run used to leave one redis-server behind
    assert {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()} == before  # read, never written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state", "tiers.toml"]  # its temp copy is gone


def test_status_reads_a_running_gateways_embedded_redis_through_its_socket(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    config = write_config(tmp_path, data_dir)

    async def scenario() -> None:
        handle = await record_starts(config, 2, keep_running=True)
        try:
            gateway_servers = redis_servers_under(tmp_path)
            assert len(gateway_servers) == 1
            assert not (data_dir / "redis.db").exists()  # nothing saved yet: only the live server knows
            res = await asyncio.to_thread(tiergate, "status", "--config", str(config), cwd=tmp_path)
            assert res.returncode == 0, res.stderr
            assert starts_column(res.stdout) == "2"
            assert "running gateway" in res.stderr
            assert redis_servers_under(tmp_path) == gateway_servers  # none added, the gateway's still up
            assert await handle.client.ping()
        finally:
            await handle.aclose()

    asyncio.run(scenario())


def test_status_on_a_redis_no_gateway_used_says_so_and_writes_nothing(tmp_path: Path, redis_url: str) -> None:
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/14"  # a database of the session's server nobody else uses
    client = redis.Redis.from_url(url)
    client.flushdb()
    config = write_config(tmp_path, tmp_path / "unused")
    res = tiergate("status", "--config", str(config), cwd=tmp_path, env={"TIERGATE_REDIS_URL": url})
    assert res.returncode == 1
    assert f"no gateway has used Redis at {url}" in res.stderr
    assert client.dbsize() == 0  # status did not start the always-on clock (tg:epoch) itself
    client.close()


# --- doctor ---------------------------------------------------------------------------------


def test_doctor_without_credentials_prints_one_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "ecs.toml"
    config.write_text("""\
[tiers.heavy]
gpu = "A100"
price_per_hour = 5

[[tiers.heavy.instances]]
provider = "ecs"
instance_id = "i-bp1example"
url = "http://{private_ip}:8000"
""")
    res = tiergate("doctor", "--config", str(config), cwd=tmp_path)  # HOME is empty: no credentials anywhere
    assert res.returncode == 1
    assert "Credentials: NOT FOUND" in res.stdout
    assert "i-bp1example  heavy  cn-hangzhou  FAIL" in res.stdout
    assert "Traceback" not in res.stderr
    assert res.stderr.strip() == "", res.stderr[:2000]  # the SDK's retries and tracebacks used to be 244 lines


# --- hash-password --------------------------------------------------------------------------


def test_hash_password_reads_the_first_line_of_a_pipe(tmp_path: Path) -> None:
    res = tiergate("hash-password", cwd=tmp_path, stdin=None, input="correct horse\nsecond line\n")
    assert res.returncode == 0, res.stderr
    encoded = res.stdout.strip()
    assert verify_hash("correct horse", encoded)
    assert not verify_hash("correct horse\n", encoded)


@pytest.mark.parametrize(("stdin", "message"), [(subprocess.DEVNULL, "no password on stdin"), ("\n", "an empty password")])
def test_hash_password_refuses_nothing_and_empty(tmp_path: Path, stdin: object, message: str) -> None:
    if isinstance(stdin, str):
        res = tiergate("hash-password", cwd=tmp_path, stdin=None, input=stdin)
    else:
        res = tiergate("hash-password", cwd=tmp_path, stdin=stdin)
    assert res.returncode == 2
    assert res.stdout == ""
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def at_a_terminal(args: list[str], answers: list[str], cwd: Path) -> tuple[int, str]:
    """Run a command on a pseudo-terminal of its own, typing each answer after each prompt."""
    primary, secondary = os.openpty()

    def own_the_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "router.cli", *args], cwd=cwd, stdin=secondary, stdout=secondary, stderr=secondary,
        preexec_fn=own_the_terminal, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},  # noqa: PLW1509
    )
    os.close(secondary)
    seen, pending, answered_at = b"", list(answers), 0
    try:
        while True:
            ready, _, _ = select.select([primary], [], [], 60)
            if not ready:
                raise AssertionError(f"no output for 60s; so far: {seen!r}")
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            prompt = seen[answered_at:].strip()
            if pending and prompt.endswith(b":"):  # a new prompt since the last answer
                os.write(primary, pending.pop(0).encode() + b"\n")
                answered_at = len(seen)
    finally:
        os.close(primary)
    return proc.wait(30), seen.decode(errors="replace")


def test_hash_password_at_a_terminal_asks_twice(tmp_path: Path) -> None:
    code, out = at_a_terminal(["hash-password"], ["s3cret pass", "s3cret pass"], tmp_path)
    assert code == 0, out
    assert "password:" in out and "password again:" in out
    assert "s3cret" not in out  # not echoed
    assert verify_hash("s3cret pass", out.strip().splitlines()[-1].strip())


def test_hash_password_at_a_terminal_refuses_a_mistyped_confirmation(tmp_path: Path) -> None:
    code, out = at_a_terminal(["hash-password"], ["s3cret pass", "s3cret pas"], tmp_path)
    assert code == 2
    assert "the two passwords differ; nothing was hashed" in out
    assert "pbkdf2_sha256" not in out


# --- api-key --------------------------------------------------------------------------------


def test_api_key_prints_a_key_and_a_hash_line_that_pastes_into_tiers_toml(tmp_path: Path) -> None:
    res = tiergate("api-key", "--name", "nightly report", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    key, hash_line = res.stdout.splitlines()
    assert key.startswith("tg_") and len(key) > 40
    assert "nightly report" in hash_line and "api_keys" in res.stderr

    config = write_config(tmp_path, tmp_path / "state", extra=f"require_login = true\napi_keys = [\n  {hash_line}\n]")
    check = tiergate("check", "--config", str(config), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    [stored] = load_config(str(config)).api_key_hashes()
    assert verify_hash(key, stored)
    assert key not in config.read_text()

    other = tiergate("api-key", cwd=tmp_path).stdout.splitlines()[0]
    assert other != key and not verify_hash(other, stored)


def test_check_notes_api_keys_that_nothing_asks_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from router.apikeys import hash_api_key, new_api_key
    from router.cli import main

    config = write_config(tmp_path, tmp_path / "state", extra=f'api_keys = ["{hash_api_key(new_api_key())}"]')
    assert main(["check", "--config", str(config)]) == 0
    assert "API keys are configured but [gateway] require_login is false" in capsys.readouterr().out
    config.write_text(config.read_text().replace("api_keys = [", "require_login = true\napi_keys = ["))
    assert main(["check", "--config", str(config)]) == 0
    assert "require_login is false" not in capsys.readouterr().out
