"""`tiers.toml`: the schema, its checks, and errors that point at a line.

Admins edit this file by hand, so every mistake must come back as `FILE:LINE: message`
(all of them at once, not the first one), and nothing unknown may pass silently: a
misspelt `idle_timout` would otherwise leave a GPU running at the default.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

PACKAGED_CONFIG = Path(__file__).with_name("tiers.toml")
MODES = ("speed", "balanced", "quality")

# --- value parsers -------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}


def parse_duration(value: Any) -> float:
    """Seconds from `30`, `"30s"`, `"5m"`, `"1h30m"`, `"7d"`."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '30s', '5m', '1h'")  # noqa: TRY004 - pydantic reports ValueError
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError(f"{value!r} is not a duration; use seconds or '30s', '5m', '1h', '7d'")


def parse_size(value: Any) -> int:
    """Bytes from `1024`, `"20MiB"`, `"2GiB"`, `"500MB"`."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        unit = m.group(2).lower()
        if unit in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"{value!r} is not a size; use bytes or '20MiB', '2GiB', '500MB'")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- schema --------------------------------------------------------------------------

_SECRET_KEYS = {"access_key_id", "access_key_secret", "access_key", "secret", "security_token", "password"}


def _refuse_secrets(data: Any) -> Any:
    if isinstance(data, dict):
        found = sorted(k for k in data if k.lower() in _SECRET_KEYS)
        if found:
            raise ValueError(
                f"credentials do not belong in tiers.toml ({', '.join(found)}); use the provider's "
                "credential chain (ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET, a RAM role or STS)"
            )
    return data


class GatewayConfig(_Strict):
    redis_url: str = ""
    data_dir: str = ".tiergate"
    max_image_size: Size = 20 * 1024**2
    max_video_size: Size = 200 * 1024**2
    max_attachments: int = Field(16, ge=1)
    max_body_size: Size = 256 * 1024**2
    request_timeout: Duration = 600.0
    daily_budget: float = Field(0.0, ge=0)  # 0 = no limit
    require_login: bool = False


class CacheConfig(_Strict):
    enabled: bool = True
    ttl: Duration = 7 * 86400.0
    max_size: Size = 2 * 1024**3


class TaskRoute(_Strict):
    speed: str
    balanced: str
    quality: str


class RoutingConfig(_Strict):
    default_mode: Literal["speed", "balanced", "quality"] = "balanced"
    long_video_seconds: float = Field(300.0, gt=0)
    tasks: dict[str, TaskRoute] = Field(default_factory=dict)


class EcsSettings(_Strict):
    region: str = "cn-hangzhou"
    endpoint: str = ""
    protocol: Literal["https", "http"] = "https"
    stopped_mode: Literal["StopCharging", "KeepCharging"] = "StopCharging"
    poll_interval: Duration = 2.0

    _secrets = model_validator(mode="before")(_refuse_secrets)


class ProvidersConfig(_Strict):
    ecs: EcsSettings = Field(default_factory=EcsSettings)


class AdminUser(_Strict):
    name: str
    password_hash: str  # "pbkdf2_sha256$ITERATIONS$SALT_HEX$HASH_HEX" (tiergate hash-password)


class AdminConfig(_Strict):
    users: list[AdminUser] = Field(default_factory=list)


class PrewarmWindow(_Strict):
    cron: str
    for_: Duration = Field(alias="for")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class InstanceConfig(_Strict):
    provider: Literal["local", "static", "ecs"]
    id: str = ""  # filled in by TierConfig: explicit id, ECS instance id, or "<tier>-<n>"
    url: str = ""
    # local
    port: int | None = Field(None, ge=1, le=65535)
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    # ecs (each may override [providers.ecs])
    instance_id: str = ""
    region: str = ""
    endpoint: str = ""
    protocol: Literal["https", "http", ""] = ""
    stopped_mode: Literal["StopCharging", "KeepCharging", ""] = ""
    spot: bool = False
    adopt_running: bool = True

    _secrets = model_validator(mode="before")(_refuse_secrets)

    @model_validator(mode="after")
    def _per_provider(self) -> InstanceConfig:
        if not self.url:
            raise ValueError("instance has no `url` (the worker's address, e.g. 'http://127.0.0.1:{port}')")
        if self.provider == "local":
            if self.port is None:
                raise ValueError("a local instance needs `port`")
            if not self.command:
                raise ValueError("a local instance needs `command` (e.g. ['tiergate', 'worker', '--port', '{port}'])")
        if self.provider == "ecs" and not self.instance_id:
            raise ValueError("an ecs instance needs `instance_id` (e.g. 'i-bp1...')")
        return self

    def render(self, text: str, **values: str) -> str:
        """Fill `{port}` (and provider values like `{private_ip}`) into a template."""
        values = {"port": str(self.port or ""), "id": self.id, **values}
        return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


class TierConfig(_Strict):
    name: str = ""
    gpu: str
    price_per_hour: float = Field(ge=0)
    idle_timeout: Duration = 300.0
    boot_timeout: Duration = 300.0
    boot_seconds: float = Field(90.0, ge=0)
    fallback: str = ""
    backend: Literal["openai", "gradio"] = "openai"
    model: str = ""
    description: str = ""
    max_queue: int = Field(100, ge=1)
    max_inflight_per_instance: int = Field(0, ge=0)  # 0 = no limit: one instance serves all
    max_runtime: Duration = 0.0  # 0 = no limit
    daily_budget: float = Field(0.0, ge=0)  # 0 = no limit
    policy: Literal["fixed", "adaptive"] = "fixed"
    wait_cost_per_minute: float = Field(0.0, ge=0)
    prewarm: list[PrewarmWindow] = Field(default_factory=list)
    prewarm_predict: bool = False
    warm_on_intent: bool = False
    tokens_per_second: float = Field(30.0, gt=0)  # for the simulator's service-time estimate
    # A cheaper stop state (issue #12): stopped but quicker to restart, billed while stopped
    # (ECS KeepCharging, a smaller standby machine). Both 0: the provider has none.
    standby_price_per_hour: float = Field(0.0, ge=0)
    standby_boot_seconds: float = Field(0.0, ge=0)
    instances: list[InstanceConfig] = Field(min_length=1)

    @property
    def always_on(self) -> bool:
        return all(i.provider == "static" for i in self.instances)


class Config(_Strict):
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    providers: ProvidersConfig = Field(default_factory=ProvidersConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    tiers: dict[str, TierConfig] = Field(min_length=1)
    path: str = Field("", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _name_things(cls, data: Any) -> Any:
        """Give tiers their names and instances their ids before validation sees them."""
        tiers = data.get("tiers") if isinstance(data, dict) else None
        if isinstance(tiers, dict):
            for name, tier in tiers.items():
                if isinstance(tier, dict):
                    tier.setdefault("name", name)
                    for n, inst in enumerate(tier.get("instances") or []):
                        if isinstance(inst, dict) and not inst.get("id"):
                            inst["id"] = inst.get("instance_id") or f"{name}-{n}"
        return data

    def data_dir(self) -> Path:
        return Path(self.gateway.data_dir).expanduser().resolve()

    def redis_url(self) -> str:
        return os.environ.get("TIERGATE_REDIS_URL") or self.gateway.redis_url

    def instance(self, instance_id: str) -> tuple[TierConfig, InstanceConfig] | None:
        for tier in self.tiers.values():
            for inst in tier.instances:
                if inst.id == instance_id:
                    return tier, inst
        return None


# --- loading with line numbers ----------------------------------------------------------


class ConfigError(Exception):
    """Every problem in a config file, each as `FILE:LINE: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class _Lines:
    """Where each key path of a TOML document is written, to turn a path into a line."""

    paths: dict[tuple, int]

    @classmethod
    def index(cls, text: str) -> _Lines:
        paths: dict[tuple, int] = {}
        arrays: dict[tuple, int] = {}
        table: tuple = ()
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith(("'", '"')) else raw.strip()
            if m := re.fullmatch(r"\[\[\s*([^\]]+?)\s*\]\]", line):
                base = _split_key(m.group(1))
                arrays[base] = arrays.get(base, -1) + 1
                table = (*base, arrays[base])
                paths.setdefault(base, lineno)
                paths[table] = lineno
            elif m := re.fullmatch(r"\[\s*([^\]]+?)\s*\]", line):
                table = _resolve(_split_key(m.group(1)), arrays)
                for k in range(1, len(table) + 1):
                    paths.setdefault(table[:k], lineno)
            elif m := re.match(r"^([A-Za-z0-9_\-\.\"' ]+?)\s*=", line):
                key = (*table, *_split_key(m.group(1)))
                paths.setdefault(key, lineno)
        return cls(paths)

    def line_of(self, loc: tuple) -> int:
        for k in range(len(loc), 0, -1):
            if loc[:k] in self.paths:
                return self.paths[loc[:k]]
        return 1


def _split_key(key: str) -> tuple:
    return tuple(p.strip().strip("\"'") for p in key.split("."))


def _resolve(path: tuple, arrays: dict[tuple, int]) -> tuple:
    """`[tiers.x.instances.meta]` after `[[tiers.x.instances]]` refers to the last element."""
    out: tuple = ()
    for part in path:
        out = (*out, part)
        if out in arrays:
            out = (*out, arrays[out])
    return out


def _message(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "json-or-python")))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (not part of the tiers.toml schema; check the spelling)"
    return f"{loc}: {msg}" if loc else msg


def _references(cfg: Config) -> list[tuple[tuple, str]]:
    """Cross-checks pydantic cannot express per field: names that must exist, ports that must differ."""
    problems: list[tuple[tuple, str]] = []
    names = set(cfg.tiers)
    for name, tier in cfg.tiers.items():
        if tier.fallback:
            if tier.fallback not in names:
                problems.append((("tiers", name, "fallback"), f"fallback tier {tier.fallback!r} does not exist"))
            elif tier.fallback == name:
                problems.append((("tiers", name, "fallback"), "a tier cannot fall back to itself"))
        seen, cur = {name}, tier.fallback
        while cur in cfg.tiers and cfg.tiers[cur].fallback:
            cur = cfg.tiers[cur].fallback
            if cur in seen:
                problems.append((("tiers", name, "fallback"), f"fallback chain from {name!r} loops back to {cur!r}"))
                break
            seen.add(cur)
        for w, window in enumerate(tier.prewarm):
            if not _valid_cron(window.cron):
                problems.append((("tiers", name, "prewarm", w), f"prewarm cron {window.cron!r} is not a valid cron expression"))
    for task, route in cfg.routing.tasks.items():
        for mode in MODES:
            target = getattr(route, mode)
            if target not in names:
                problems.append((("routing", "tasks", task, mode), f"tier {target!r} does not exist (tiers: {', '.join(sorted(names))})"))
    ports: dict[int, str] = {}
    ids: dict[str, str] = {}
    for name, tier in cfg.tiers.items():
        for n, inst in enumerate(tier.instances):
            where = ("tiers", name, "instances", n)
            if inst.id in ids:
                problems.append(((*where, "id"), f"instance id {inst.id!r} is already used in tier {ids[inst.id]!r}"))
            ids[inst.id] = name
            if inst.provider == "local" and inst.port is not None:
                if inst.port in ports:
                    problems.append(((*where, "port"), f"port {inst.port} is already used by tier {ports[inst.port]!r}"))
                ports[inst.port] = name
    return problems


def _valid_cron(expr: str) -> bool:
    try:
        from croniter import croniter

        return bool(croniter.is_valid(expr))
    except ImportError:  # pragma: no cover - croniter is a dependency
        return True


def parse_config(text: str, path: str = "tiers.toml") -> Config:
    """Validate a config document; raises ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        line = m.group(1) if m else "1"
        raise ConfigError([f"{path}:{line}: TOML syntax error: {str(exc).split(' (at line')[0]}"]) from None
    lines = _Lines.index(text)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = [f"{path}:{lines.line_of(tuple(e['loc']))}: {_message(e)}" for e in exc.errors()]
        raise ConfigError(problems) from None
    refs = _references(cfg)
    if refs:
        raise ConfigError([f"{path}:{lines.line_of(loc)}: {'.'.join(map(str, loc))}: {msg}" for loc, msg in refs])
    return cfg.model_copy(update={"path": path})


def resolve_path(cli_path: str | None = None) -> Path:
    """`--config`, then `$TIERGATE_CONFIG`, then `./tiers.toml`, then the packaged default."""
    for candidate in (cli_path, os.environ.get("TIERGATE_CONFIG")):
        if candidate:
            return Path(candidate)
    local = Path("tiers.toml")
    return local if local.exists() else PACKAGED_CONFIG


def load_config(cli_path: str | None = None) -> Config:
    path = resolve_path(cli_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}:1: cannot read the config file: {exc.strerror or exc}"]) from None
    return parse_config(text, str(path))
