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

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WrapValidator,
    model_validator,
)

PACKAGED_CONFIG = Path(__file__).with_name("tiers.toml")
MODES = ("speed", "balanced", "quality")

# --- value parsers -------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


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


def _size(value: Any, handler: Any) -> ByteSize:
    """pydantic's ByteSize, minus what it lets through (`true` is 1 byte) and with an error an admin can act on."""
    problem = ValueError(f"{value!r} is not a size; use bytes or '20MiB', '2GiB', '500MB'")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise problem
    try:
        return handler(value)
    except ValidationError:
        raise problem from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[ByteSize, WrapValidator(_size)]
_SIZE_ADAPTER: TypeAdapter[ByteSize] = TypeAdapter(Size)


def parse_size(value: Any) -> int:
    """Bytes from `1024`, `"20MiB"`, `"2GiB"`, `"500MB"` (pydantic's ByteSize units)."""
    try:
        return int(_SIZE_ADAPTER.validate_python(value))
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


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


# --- password and API key hashes ---------------------------------------------------------

HASH_SCHEME = "pbkdf2_sha256"
MAX_HASH_ITERATIONS = 10_000_000  # past this one login check would stall the gateway for seconds
_HASH = re.compile(r"pbkdf2_sha256\$([0-9]+)\$((?:[0-9a-f]{2})+)\$([0-9a-f]{64})")
HASH_FORMAT = "'pbkdf2_sha256$ITERATIONS$SALT_HEX$HASH_HEX'"


def hash_problem(encoded: object) -> str | None:
    """Why `encoded` is not a hash tiergate can verify, or None when it is.

    Checked when the config loads, so a pasted password or a truncated hash is a
    `FILE:LINE` error for the admin instead of a failed (or crashing) login later.
    The value itself is never repeated: it may be a password pasted by mistake.
    """
    if not isinstance(encoded, str) or not (m := _HASH.fullmatch(encoded)):
        return f"not a tiergate hash: expected {HASH_FORMAT}"
    if not 1 <= int(m.group(1)) <= MAX_HASH_ITERATIONS:
        return f"the iteration count must be between 1 and {MAX_HASH_ITERATIONS:,}"
    return None


def _password_hash(value: str) -> str:
    if problem := hash_problem(value):
        raise ValueError(f"{problem}, as printed by `tiergate hash-password`")
    return value


def _api_key_hash(value: str) -> str:
    if value.startswith(API_KEY_PREFIX):
        raise ValueError("this is an API key itself; put its hash here (the second line `tiergate api-key` prints)")
    if problem := hash_problem(value):
        raise ValueError(f"{problem}, as printed by `tiergate api-key`")
    if int(value.split("$")[1]) > MAX_KEY_ITERATIONS:
        raise ValueError(f"an API key hash may use at most {MAX_KEY_ITERATIONS} iterations (every request verifies it); "
                         "make the key with `tiergate api-key`")
    return value


API_KEY_PREFIX = "tg_"
MAX_KEY_ITERATIONS = 1000  # keys are 256 random bits: stretching adds nothing but per-request cost
API_KEYS_ENV = "TIERGATE_API_KEYS"
PasswordHash = Annotated[str, AfterValidator(_password_hash)]
ApiKeyHash = Annotated[str, AfterValidator(_api_key_hash)]


def env_api_keys() -> tuple[list[str], list[str]]:
    """The hashes in `$TIERGATE_API_KEYS` (comma-separated), and the problems with it."""
    hashes, problems = [], []
    entries = [e.strip() for e in os.environ.get(API_KEYS_ENV, "").split(",")]
    for n, entry in enumerate(entries, start=1):
        if not entry:
            continue
        try:
            hashes.append(_api_key_hash(entry))
        except ValueError as exc:
            problems.append(f"${API_KEYS_ENV}: entry {n}: {exc}")
    return hashes, problems


# --- schema, continued ---------------------------------------------------------------------


class GatewayConfig(_Strict):
    redis_url: str = ""
    data_dir: str = ".tiergate"
    max_image_size: Size = ByteSize(20 * 1024**2)
    max_video_size: Size = ByteSize(200 * 1024**2)
    max_attachments: int = Field(16, ge=1)
    max_body_size: Size = ByteSize(256 * 1024**2)
    request_timeout: Duration = 600.0
    daily_budget: float = Field(0.0, ge=0)  # 0 = no limit
    require_login: bool = False
    # Scripts' credentials when require_login is on: hashes only (`tiergate api-key`), never keys.
    api_keys: list[ApiKeyHash] = Field(default_factory=list)


class CacheConfig(_Strict):
    enabled: bool = True
    ttl: Duration = 7 * 86400.0
    max_size: Size = ByteSize(2 * 1024**3)


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
    name: str = Field(min_length=1)
    password_hash: PasswordHash  # "pbkdf2_sha256$ITERATIONS$SALT_HEX$HASH_HEX" (tiergate hash-password)
    # admin: everything; presenter: browse, search, replay and export cached answers, nothing else.
    role: Literal["admin", "presenter"] = "admin"

    @model_validator(mode="before")
    @classmethod
    def _no_plain_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError("a password does not belong in tiers.toml; put `password_hash` from `tiergate hash-password`")
        return data


class AdminConfig(_Strict):
    users: list[AdminUser] = Field(default_factory=list)


class PresenterConfig(_Strict):
    # true: anonymous users may browse, search and export every cached answer, not only pinned demo sets.
    public: bool = False


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
    # How a worker shows it is this instance, not a stranger on the same port: `auto` takes the
    # stand-in worker's x-tiergate-instance header, else the tier's model in /v1/models (vLLM).
    identify: Literal["auto", "model", "none"] = "auto"

    _secrets = model_validator(mode="before")(_refuse_secrets)

    @model_validator(mode="after")
    def _per_provider(self) -> InstanceConfig:
        if not self.url:
            raise ValueError("instance has no `url` (the worker's address, e.g. 'http://127.0.0.1:{port}')")
        if self.provider == "local":
            if not self.command:
                raise ValueError("a local instance needs `command` (e.g. ['tiergate', 'worker', '--port', '{port}'])")
            if self.port is None:
                # No port: the gateway picks a free one at start and fills it in, so both the
                # worker and the gateway must be told it.
                if not any("{port}" in part for part in self.command):
                    raise ValueError("a local instance without `port` must pass `{port}` in its `command` "
                                     "(the gateway chooses a free port at start); or set `port`")
                if "{port}" not in self.url:
                    raise ValueError("a local instance without `port` must use `{port}` in its `url` "
                                     "(e.g. 'http://127.0.0.1:{port}'); or set `port`")
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
    presenter: PresenterConfig = Field(default_factory=PresenterConfig)
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

    def api_key_hashes(self) -> list[str]:
        """`[gateway] api_keys` plus `$TIERGATE_API_KEYS` (malformed env entries are refused at load)."""
        return [*self.gateway.api_keys, *env_api_keys()[0]]

    def user(self, name: str) -> AdminUser | None:
        return next((u for u in self.admin.users if u.name == name), None)

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
    """Where each key path of a TOML document is written, to turn a path into a line.

    Paths are the ones pydantic reports: table and key names, and list indexes for array
    elements (of tables or of values, even when an array spans several lines).
    """

    paths: dict[tuple, int]

    @classmethod
    def index(cls, text: str) -> _Lines:
        scanner = _Scanner(text)
        try:
            scanner.document()
        except (IndexError, ValueError, tomllib.TOMLDecodeError):  # pragma: no cover - tomllib accepted the text
            pass  # line numbers are a help; whatever was indexed so far still points somewhere useful
        return cls(scanner.paths)

    def line_of(self, loc: tuple) -> int:
        for k in range(len(loc), 0, -1):
            if loc[:k] in self.paths:
                return self.paths[loc[:k]]
        return 1


class _Scanner:
    """Just enough of a TOML reader to know the line of every key and array element.

    Only ever run on text tomllib has accepted, so it can skip what it does not need to
    understand (values) as long as it knows where they end.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")
    _SCALAR_END = re.compile(r"[,\]}\n#]")

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.paths: dict[tuple, int] = {}
        self.arrays: dict[tuple, int] = {}  # array-of-tables path -> index of its last element

    def _to(self, j: int) -> None:
        self.line += self.s.count("\n", self.i, j)
        self.i = j

    def _at(self, token: str) -> bool:
        return self.s.startswith(token, self.i)

    def _blank(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._to(self.i + 1)
            elif c == "#":
                end = self.s.find("\n", self.i)
                self._to(len(self.s) if end < 0 else end)
            else:
                return

    def _string(self) -> str:
        """Skip one string of any of the four kinds; return its source text."""
        start, s = self.i, self.s
        for quote in ('"""', "'''"):
            if self._at(quote):
                j = start + 3
                while True:
                    if quote == '"""' and s[j] == "\\":
                        j += 2
                    elif s.startswith(quote, j):
                        j += 3
                        for _ in range(2):  # `""""` ends the string with a quote in it: up to two more close it
                            if j < len(s) and s[j] == quote[0]:
                                j += 1
                        break
                    else:
                        j += 1
                self._to(j)
                return s[start:j]
        quote, j = s[start], start + 1
        while s[j] != quote:
            j += 2 if quote == '"' and s[j] == "\\" else 1
        self._to(j + 1)
        return s[start : j + 1]

    def _key(self) -> tuple:
        parts: list[str] = []
        while True:
            self._blank(False)
            if self.s[self.i] in "\"'":
                parts.append(tomllib.loads(f"k = {self._string()}")["k"])
            else:
                m = self._BARE.match(self.s, self.i)
                if not m:
                    raise ValueError("not a key")
                parts.append(m.group(0))
                self._to(m.end())
            self._blank(False)
            if not self._at("."):
                return tuple(parts)
            self._to(self.i + 1)

    def _value(self, path: tuple) -> None:
        c = self.s[self.i]
        if c in "\"'":
            self._string()
        elif c == "[":
            self._to(self.i + 1)
            n = 0
            while True:
                self._blank(True)
                if self._at("]"):
                    self._to(self.i + 1)
                    return
                self.paths.setdefault((*path, n), self.line)
                self._value((*path, n))
                self._blank(True)
                if self._at(","):
                    self._to(self.i + 1)
                    n += 1
        elif c == "{":
            self._to(self.i + 1)
            while True:
                self._blank(False)
                if self._at("}"):
                    self._to(self.i + 1)
                    return
                self._pair(path)
                self._blank(False)
                if self._at(","):
                    self._to(self.i + 1)
        else:
            m = self._SCALAR_END.search(self.s, self.i)
            self._to(m.start() if m else len(self.s))

    def _pair(self, table: tuple) -> None:
        line, key = self.line, self._key()
        for k in range(1, len(key) + 1):
            self.paths.setdefault((*table, *key[:k]), line)
        if not self._at("="):
            raise ValueError("no '=' after a key")
        self._to(self.i + 1)
        self._blank(False)
        self._value((*table, *key))

    def _resolve(self, path: tuple) -> tuple:
        """`[tiers.x.instances.meta]` after `[[tiers.x.instances]]` refers to the last element."""
        out: tuple = ()
        for part in path:
            out = (*out, part)
            if out in self.arrays:
                out = (*out, self.arrays[out])
        return out

    def document(self) -> None:
        table: tuple = ()
        while True:
            self._blank(True)
            if self.i >= len(self.s):
                return
            line = self.line
            if self._at("[["):
                self._to(self.i + 2)
                key = self._key()
                self._to(self.s.index("]]", self.i) + 2)
                base = (*self._resolve(key[:-1]), key[-1])
                self.arrays[base] = self.arrays.get(base, -1) + 1
                table = (*base, self.arrays[base])
                for k in range(1, len(base) + 1):
                    self.paths.setdefault(base[:k], line)
                self.paths[table] = line
            elif self._at("["):
                self._to(self.i + 1)
                key = self._key()
                self._to(self.s.index("]", self.i) + 1)
                table = self._resolve(key)
                for k in range(1, len(table) + 1):
                    self.paths.setdefault(table[:k], line)
            else:
                self._pair(table)


def _message(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "json-or-python")))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (not part of the tiers.toml schema; check the spelling)"
    return f"{loc}: {msg}" if loc else msg


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _references(data: dict) -> list[tuple[tuple, str]]:
    """Cross-checks pydantic cannot express per field: names that must exist, ports and ids that must differ.

    They read the raw TOML data, not the validated model, so they still run when other
    keys are wrong: the admin gets every problem from one `tiergate check`. Values of the
    wrong type are skipped here; the schema reports those.
    """
    problems: list[tuple[tuple, str]] = []
    tiers = {name: _dict(t) for name, t in _dict(data.get("tiers")).items()}
    names = set(tiers)

    def fallback(name: str) -> str:
        value = tiers.get(name, {}).get("fallback")
        return value if isinstance(value, str) else ""

    for name, tier in tiers.items():
        if target := fallback(name):
            if target not in names:
                problems.append((("tiers", name, "fallback"), f"fallback tier {target!r} does not exist"))
            elif target == name:
                problems.append((("tiers", name, "fallback"), "a tier cannot fall back to itself"))
        seen, cur = {name}, fallback(name)
        while cur in tiers and fallback(cur):
            cur = fallback(cur)
            if cur in seen:
                problems.append((("tiers", name, "fallback"), f"fallback chain from {name!r} loops back to {cur!r}"))
                break
            seen.add(cur)
        for w, window in enumerate(_list(tier.get("prewarm"))):
            cron = _dict(window).get("cron")
            if isinstance(cron, str) and not _valid_cron(cron):
                problems.append((("tiers", name, "prewarm", w), f"prewarm cron {cron!r} is not a valid cron expression"))
    if names:
        for task, route in _dict(_dict(data.get("routing")).get("tasks")).items():
            for mode in MODES:
                target = _dict(route).get(mode)
                if isinstance(target, str) and target not in names:
                    problems.append((
                        ("routing", "tasks", task, mode), f"tier {target!r} does not exist (tiers: {', '.join(sorted(names))})"
                    ))
    ports: dict[int, str] = {}
    ids: dict[str, str] = {}
    for name, tier in tiers.items():
        for n, inst in enumerate(_list(tier.get("instances"))):
            inst = _dict(inst)
            where = ("tiers", name, "instances", n)
            inst_id = inst.get("id") or inst.get("instance_id") or f"{name}-{n}"
            if isinstance(inst_id, str):
                if inst_id in ids:
                    problems.append(((*where, "id"), f"instance id {inst_id!r} is already used in tier {ids[inst_id]!r}"))
                ids[inst_id] = name
            port = inst.get("port")
            if inst.get("provider") == "local" and isinstance(port, int) and not isinstance(port, bool):
                if port in ports:
                    problems.append(((*where, "port"), f"port {port} is already used by tier {ports[port]!r}"))
                ports[port] = name
    users: set[str] = set()
    for n, user in enumerate(_list(_dict(data.get("admin")).get("users"))):
        user_name = _dict(user).get("name")
        if isinstance(user_name, str):
            if user_name in users:
                problems.append((("admin", "users", n, "name"), f"user {user_name!r} is listed twice"))
            users.add(user_name)
    return problems


def _valid_cron(expr: str) -> bool:
    try:
        from croniter import croniter

        return bool(croniter.is_valid(expr))
    except ImportError:  # pragma: no cover - croniter is a dependency
        return True


def parse_config(text: str, path: str = "tiers.toml") -> Config:
    """Validate a config document; raises ConfigError listing every problem, in line order."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        line = m.group(1) if m else "1"
        raise ConfigError([f"{path}:{line}: TOML syntax error: {str(exc).split(' (at line')[0]}"]) from None
    lines = _Lines.index(text)
    found: list[tuple[int, str]] = [
        (lines.line_of(loc), f"{'.'.join(map(str, loc))}: {msg}") for loc, msg in _references(data)
    ]
    cfg = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        found += [(lines.line_of(tuple(e["loc"])), _message(e)) for e in exc.errors()]
    if found or cfg is None:
        found.sort(key=lambda p: p[0])  # stable: the schema's order within a line
        raise ConfigError([f"{path}:{line}: {msg}" for line, msg in found])
    return cfg.model_copy(update={"path": path})


def resolve_path(cli_path: str | None = None) -> Path:
    """`--config`, then `$TIERGATE_CONFIG`, then `./tiers.toml`, then the packaged default."""
    for candidate in (cli_path, os.environ.get("TIERGATE_CONFIG")):
        if candidate:
            return Path(candidate)
    local = Path("tiers.toml")
    return local if local.exists() else PACKAGED_CONFIG


def load_config(cli_path: str | None = None) -> Config:
    """The config a command runs with: the file, plus `$TIERGATE_API_KEYS` checked as strictly."""
    path = resolve_path(cli_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}:1: cannot read the config file: {exc.strerror or exc}"]) from None
    env_problems = env_api_keys()[1]
    try:
        cfg = parse_config(text, str(path))
    except ConfigError as exc:
        raise ConfigError(exc.problems + env_problems) from None
    if env_problems:
        raise ConfigError(env_problems)
    return cfg
