"""`tiers.toml` validation: what an admin sees when the file is wrong."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ByteSize

from router.apikeys import hash_api_key, new_api_key, verify_api_key
from router.config import PACKAGED_CONFIG, ConfigError, load_config, parse_config, parse_duration, parse_size

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
        "t.toml:26: tiers.other.instances.0.port: port 18001 is already used by tier 'light'",
        "t.toml:30: tiers.other.instances.1: instance has no `url` (the worker's address, e.g. 'http://127.0.0.1:{port}')",
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


# --- every problem in one pass ------------------------------------------------------------


def test_schema_and_reference_problems_come_together_in_line_order() -> None:
    """A typo, a bad duration and an unknown tier: three problems from one check, not two then one."""
    text = (
        GOOD.replace('quality = "light"', 'quality = "gold"')
        .replace('idle_timeout = "5m"', 'idle_timout = "5m"\nboot_timeout = "soon"')
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, "t.toml")
    assert err.value.problems == [
        "t.toml:7: routing.tasks.caption.quality: tier 'gold' does not exist (tiers: light)",
        "t.toml:12: tiers.light.idle_timout: unknown key (not part of the tiers.toml schema; check the spelling)",
        "t.toml:13: tiers.light.boot_timeout: 'soon' is not a duration; use seconds or '30s', '5m', '1h', '7d'",
    ]


def test_check_prints_every_problem_and_nothing_on_stdout(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('quality = "light"', 'quality = "gold"').replace("price_per_hour = 1.0", "price_per_hour = -1"))
    res = run_check(bad)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        f"{bad}:7: routing.tasks.caption.quality: tier 'gold' does not exist (tiers: light)",
        f"{bad}:11: tiers.light.price_per_hour: Input should be greater than or equal to 0",
    ]


def test_lines_of_elements_in_multiline_arrays_and_after_multiline_strings() -> None:
    """Errors inside a multi-line array point at the element's line; a `[table]` inside a string is not a table."""
    text = GOOD.replace('[gateway]\n', '[gateway]\nnote = """\n[not.a.table]\n"""\n') + """
[admin]
users = [
  {name = "ann", password_hash = "pbkdf2_sha256$1000$00ff$""" + "a" * 64 + """"},
  {name = "bob", password_hash = "hunter2"},
]
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, "t.toml")
    assert err.value.problems[0].startswith("t.toml:2: gateway.note: unknown key")
    assert err.value.problems[1].startswith("t.toml:26: admin.users.1.password_hash: not a tiergate hash")
    assert len(err.value.problems) == 2


# --- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("20MiB", 20 * 1024**2), ("2GiB", 2 * 1024**3), ("500MB", 500_000_000), (1024, 1024), ("1024", 1024), ("1.5 KiB", 1536)],
)
def test_sizes_are_pydantic_bytesizes(text: object, size: int) -> None:
    cfg = parse_config(GOOD.replace("[gateway]\n", f"[gateway]\nmax_image_size = {text!r}\n".replace("'", '"')))
    assert cfg.gateway.max_image_size == size
    assert isinstance(cfg.gateway.max_image_size, ByteSize)  # so the UI can print `.human_readable()`
    assert parse_size(text) == size


def test_default_sizes_are_bytesizes_too() -> None:
    cfg = parse_config(GOOD)
    assert cfg.cache.max_size.human_readable() == "2.0GiB"
    assert cfg.gateway.max_video_size.human_readable() == "200.0MiB"


@pytest.mark.parametrize("bad", ["true", '"lots"', '"20 furlongs"', "-5", '""', "2.5"])
def test_bad_sizes_are_refused_on_their_line(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD.replace("[gateway]\n", f"[gateway]\nmax_body_size = {bad}\n"), "t.toml")
    [problem] = err.value.problems
    assert problem.startswith("t.toml:2: gateway.max_body_size: ")
    assert "is not a size; use bytes or '20MiB', '2GiB', '500MB'" in problem


# --- admin users, API keys, presenter ------------------------------------------------------

HASH = "pbkdf2_sha256$240000$" + "0f" * 16 + "$" + "ab" * 32


def with_admin(users: str) -> str:
    return GOOD + f"\n[admin]\nusers = [\n{users}\n]\n"


def test_users_have_a_role_admin_by_default() -> None:
    cfg = parse_config(with_admin(f'  {{name = "ann", password_hash = "{HASH}"}},\n'
                                  f'  {{name = "pia", password_hash = "{HASH}", role = "presenter"}},'))
    assert [(u.name, u.role) for u in cfg.admin.users] == [("ann", "admin"), ("pia", "presenter")]
    assert cfg.user("pia").role == "presenter" and cfg.user("nobody") is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('{name = "ann", password_hash = "hunter2"}', "password_hash: not a tiergate hash: expected 'pbkdf2_sha256$"),
        ('{name = "ann", password_hash = "pbkdf2_sha256$240000$00ff$abc"}', "password_hash: not a tiergate hash"),
        ('{name = "ann", password_hash = "pbkdf2_sha256$240000$0g$' + "a" * 64 + '"}', "password_hash: not a tiergate hash"),
        ('{name = "ann", password_hash = "pbkdf2_sha256$0$00ff$' + "a" * 64 + '"}', "the iteration count must be between 1"),
        ('{name = "ann", password = "hunter2"}', "a password does not belong in tiers.toml"),
        ('{name = "ann", password_hash = "' + HASH + '", role = "boss"}', "role: Input should be 'admin' or 'presenter'"),
        ('{name = "", password_hash = "' + HASH + '"}', "name: String should have at least 1 character"),
    ],
)
def test_bad_users_are_refused_with_their_line(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(with_admin(f'  {{name = "ok", password_hash = "{HASH}"}},\n  {entry},'), "t.toml")
    [problem] = err.value.problems
    assert problem.startswith("t.toml:23: admin.users.1")
    assert message in problem
    assert "hunter2" not in problem  # a pasted password is never echoed


def test_a_user_listed_twice_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(with_admin(f'  {{name = "ann", password_hash = "{HASH}"}},\n  {{name = "ann", password_hash = "{HASH}"}},'), "t.toml")
    assert err.value.problems == ["t.toml:23: admin.users.1.name: user 'ann' is listed twice"]


def test_api_keys_take_hashes_from_the_file_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key1, key2 = new_api_key(), new_api_key()
    hash1, hash2 = hash_api_key(key1), hash_api_key(key2)
    monkeypatch.setenv("TIERGATE_API_KEYS", f" {hash2} ,")
    cfg = parse_config(GOOD.replace("[gateway]\n", f'[gateway]\nrequire_login = true\napi_keys = ["{hash1}"]\n'))
    assert cfg.api_key_hashes() == [hash1, hash2]
    assert verify_api_key(key1, cfg.api_key_hashes()) and verify_api_key(key2, cfg.api_key_hashes())
    assert not verify_api_key(new_api_key(), cfg.api_key_hashes())
    assert not verify_api_key(hash1, cfg.api_key_hashes())  # the hash is not the key


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("KEY", "this is an API key itself; put its hash here"),
        ("pbkdf2_sha256$1$00ff", "not a tiergate hash: expected 'pbkdf2_sha256$ITERATIONS$SALT_HEX$HASH_HEX', as printed by `tiergate api-key`"),
        (HASH, "an API key hash may use at most 1000 iterations"),
    ],
)
def test_bad_api_keys_are_refused_in_the_file_and_the_environment(
    entry: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = entry.replace("KEY", new_api_key())
    good_hash = hash_api_key(new_api_key())
    path = tmp_path / "t.toml"
    path.write_text(GOOD.replace("[gateway]\n", f'[gateway]\napi_keys = [\n  "{good_hash}",\n  "{entry}",\n]\n'))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    [problem] = err.value.problems
    assert problem.startswith(f"{path}:4: gateway.api_keys.1: {message}")
    assert entry not in problem

    path.write_text(GOOD)
    monkeypatch.setenv("TIERGATE_API_KEYS", f"{good_hash},{entry}")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert err.value.problems == [f"$TIERGATE_API_KEYS: entry 2: {problem.split('api_keys.1: ', 1)[1]}"]


def test_presenter_public_is_off_by_default_and_strictly_checked() -> None:
    assert parse_config(GOOD).presenter.public is False
    assert parse_config(GOOD + "\n[presenter]\npublic = true\n").presenter.public is True
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD + "\n[presenter]\npublic = \"maybe\"\nopen = true\n", "t.toml")
    assert err.value.problems == [
        "t.toml:21: presenter.public: Input should be a valid boolean, unable to interpret input",
        "t.toml:22: presenter.open: unknown key (not part of the tiers.toml schema; check the spelling)",
    ]


# --- ports chosen at start -----------------------------------------------------------------


def test_a_local_instance_may_leave_its_port_to_the_gateway() -> None:
    cfg = parse_config(GOOD.replace("port = 18001\n", ""))
    assert cfg.tiers["light"].instances[0].port is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('command = ["tiergate", "worker", "--port", "{port}"]', 'command = ["tiergate", "worker"]'),
         "a local instance without `port` must pass `{port}` in its `command`"),
        (('url = "http://127.0.0.1:{port}"', 'url = "http://127.0.0.1:8000"'),
         "a local instance without `port` must use `{port}` in its `url`"),
    ],
)
def test_without_a_port_the_command_and_url_must_take_it(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD.replace("port = 18001\n", "").replace(*edit), "t.toml")
    [problem] = err.value.problems
    assert problem.startswith(f"t.toml:14: tiers.light.instances.0: {message}")


# --- one tiers.toml ------------------------------------------------------------------------


def test_the_packaged_default_is_the_repository_tiers_toml() -> None:
    """`router/tiers.toml` (what a wheel ships) is a link to `tiers.toml`, so the two cannot drift."""
    packaged = ROOT / "router" / "tiers.toml"
    assert packaged.is_symlink() and packaged.resolve() == (ROOT / "tiers.toml").resolve()
    assert PACKAGED_CONFIG.read_bytes() == (ROOT / "tiers.toml").read_bytes()
    assert (importlib.resources.files("router") / "tiers.toml").read_bytes() == (ROOT / "tiers.toml").read_bytes()
