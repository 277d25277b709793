"""`tiers.toml` validation: what an admin sees when the file is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from router.config import ConfigError, load_config, parse_config, parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
[gateway]
data_dir = "/tmp/x"

[routing.tasks.caption]
speed = "light"
balanced = "light"
quality = "light"

[tiers.light]
gpu = "RTX 3060"
price_per_hour = 1.0
idle_timeout = "5m"

[[tiers.light.instances]]
provider = "local"
port = 18001
command = ["tiergate", "worker", "--port", "{port}"]
url = "http://127.0.0.1:{port}"
"""


def run_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "check", "--config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_packaged_default_is_valid_and_has_the_three_seed_tiers() -> None:
    cfg = load_config(str(ROOT / "tiers.toml"))
    assert {n: (t.gpu, t.price_per_hour) for n, t in cfg.tiers.items()} == {
        "light": ("RTX 3060", 1.0),
        "standard": ("RTX 4090D", 2.8),
        "heavy": ("A100", 5.0),
    }
    assert all(i.provider == "local" for t in cfg.tiers.values() for i in t.instances)


@pytest.mark.parametrize(
    ("text", "seconds"), [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0), ("90", 90.0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "-1", "m5", True, ""])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_sizes() -> None:
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("20MiB") == 20 * 1024**2
    assert parse_size("500MB") == 500_000_000
    with pytest.raises(ValueError):
        parse_size("lots")


def test_typo_is_an_error_on_its_line() -> None:
    text = GOOD.replace('idle_timeout = "5m"', 'idle_timout = "5m"')
    with pytest.raises(ConfigError) as err:
        parse_config(text, "tiers.toml")
    assert err.value.problems == [
        "tiers.toml:12: tiers.light.idle_timout: unknown key (not part of the tiers.toml schema; check the spelling)"
    ]


def test_every_problem_is_reported_with_its_line() -> None:
    text = GOOD.replace('idle_timeout = "5m"', 'idle_timeout = "soon"').replace(
        'url = "http://127.0.0.1:{port}"', 'access_key_id = "LTAI-secret"'
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, "t.toml")
    problems = err.value.problems
    assert any(p.startswith("t.toml:12: tiers.light.idle_timeout:") and "'soon' is not a duration" in p for p in problems)
    assert any(p.startswith("t.toml:14: tiers.light.instances.0:") and "credentials do not belong" in p for p in problems)
    assert all("LTAI-secret" not in p for p in problems)


def test_references_are_checked() -> None:
    text = GOOD.replace('quality = "light"', 'quality = "gold"').replace(
        'idle_timeout = "5m"', 'idle_timeout = "5m"\nfallback = "nowhere"'
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, "t.toml")
    assert "t.toml:7: routing.tasks.caption.quality: tier 'gold' does not exist (tiers: light)" in err.value.problems
    assert "t.toml:13: tiers.light.fallback: fallback tier 'nowhere' does not exist" in err.value.problems


def test_duplicate_ports_and_missing_url() -> None:
    text = GOOD + """
[tiers.other]
gpu = "A100"
price_per_hour = 5

[[tiers.other.instances]]
provider = "local"
port = 18001
command = ["x"]
url = "http://127.0.0.1:{port}"

[[tiers.other.instances]]
provider = "static"
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, "t.toml")
    assert err.value.problems == [
        ("t.toml:30: tiers.other.instances.1: instance has no `url` (the worker's address, e.g. 'http://127.0.0.1:{port}')")
    ]
    with pytest.raises(ConfigError) as err:
        parse_config(text.rsplit("[[tiers.other.instances]]", 1)[0], "t.toml")
    assert err.value.problems == ["t.toml:26: tiers.other.instances.0.port: port 18001 is already used by tier 'light'"]


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    ok = run_check(good)
    assert ok.returncode == 0, ok.stderr
    assert "ok (1 tiers" in ok.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("price_per_hour = 1.0", "price_per_hour = -1").replace("[tiers.light]", "[tiers.light"))
    res = run_check(bad)
    assert res.returncode == 2
    assert res.stderr.startswith(f"{bad}:9: TOML syntax error")

    bad.write_text(GOOD.replace("price_per_hour = 1.0", "price_per_hour = -1"))
    res = run_check(bad)
    assert res.returncode == 2
    assert res.stderr.strip() == f"{bad}:11: tiers.light.price_per_hour: Input should be greater than or equal to 0"


def test_serve_refuses_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('gpu = "RTX 3060"', 'gpu = "RTX 3060"\ncolour = "red"'))
    res = subprocess.run(
        [sys.executable, "-m", "router.cli", "serve", "--config", str(bad), "--port", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 2
    assert f"{bad}:11: tiers.light.colour: unknown key" in res.stderr


def test_config_env_variable_chooses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text(GOOD)
    res = subprocess.run(
        [sys.executable, "-m", "router.cli", "check"], capture_output=True, text=True, timeout=60, check=False,
        env={"TIERGATE_CONFIG": str(path), "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert str(path) in res.stdout
