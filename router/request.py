"""From the raw body to a validated `ChatRequest`, before any machine is touched.

A request a worker would refuse must be refused here: once it passes, the gateway may
boot a GPU for it, and a boot costs minutes and money whatever the worker then says. So
this module judges everything it can: the JSON itself (bounded nesting), the types and
ranges of the OpenAI parameters, the gateway's own `tiergate` options, the messages and
their media (router/media.py), and what the chosen tier's backend can take (the upstream
Gradio web demo takes much less than an OpenAI server). Each refusal is a 4xx that names
the field, in the OpenAI error shape.

The gateway calls `parse_json(raw)` (or `parse_json_async`) and then `prepare(body, cfg)`.
Parameters it does not know are passed on untouched: model servers accept extensions
(vLLM's `top_k`, `chat_template_kwargs`, ...) that the gateway has no business refusing.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import routing
from .backends import gradio as gradio_backend
from .config import Config, TierConfig
from .errors import BadRequest, NotFound
from .media import MediaLimits, ParsedMessages, parse_messages
from .messages import json_type, short

# Nesting deeper than this anywhere in a body is refused: chat bodies nest about 6 levels,
# a JSON schema in `response_format` or `tools` a few dozen at most, and deeper input
# would only exercise recursion in every JSON encoder between here and the worker.
MAX_DEPTH = 64
# Above this size, parsing and media decoding run in a thread, off the event loop.
THREAD_ABOVE = 256 * 1024
# vLLM takes any number of samples; OpenAI caps `n` at 128, and so does the gateway (each
# sample is GPU time).
MAX_N = 128
_INT64 = 2**63

# Body fields the gateway consumes itself rather than forwarding.
OWN_FIELDS = ("tiergate",)
TIERGATE_OPTIONS = ("mode", "task", "cache")


@dataclass
class ChatRequest:
    body: dict  # what goes to the worker, minus `model`, which the tier decides
    canonical: list  # messages with media replaced by hashes, for the cache key
    tier: str
    task: str
    task_reason: str
    mode: str
    stream: bool
    use_cache: bool
    question: str
    pinned: bool  # the client named the tier
    backend: str = "openai"  # the chosen tier's backend
    n: int = 1  # answers asked for
    # Fallback tiers that cannot serve this request, and why: a fallback must not be
    # started for a request it would refuse (e.g. a Gradio tier for an http(s) image URL).
    unfit: dict[str, str] = field(default_factory=dict)


def limits_for(cfg: Config) -> MediaLimits:
    """The media limits of a config (so a hot reload changes them with everything else)."""
    g = cfg.gateway
    return MediaLimits(max_image_bytes=g.max_image_size, max_video_bytes=g.max_video_size, max_attachments=g.max_attachments)


# --- the JSON ------------------------------------------------------------------------


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or a 400: not JSON, not UTF-8, or nested deeper than MAX_DEPTH."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise _too_deep("") from None
        raise BadRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    # Depth can only pass the limit if there are that many brackets: one C-speed count
    # spares the walk for nearly every real body (even a 200 MB one, which is one string).
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        where = _deeper_than(value, MAX_DEPTH)
        if where is not None:
            raise _too_deep(where)
    return value


async def parse_json_async(raw: bytes) -> Any:
    """`parse_json`, in a thread for big bodies (a 200 MB video body takes a while to parse)."""
    if len(raw) > THREAD_ABOVE:
        return await asyncio.to_thread(parse_json, raw)
    return parse_json(raw)


def _too_deep(where: str) -> BadRequest:
    """The field to fix is the top-level one; the path is cut short (it is 64 levels long)."""
    field_name = re.split(r"[.\[]", where, maxsplit=1)[0] if where else ""
    shown = where if len(where) <= 60 else where[:57] + "..."
    at = (f" (in `{field_name}`, at {shown})" if field_name else f" (at {shown})") if where else ""
    return BadRequest(
        f"the request body nests JSON deeper than {MAX_DEPTH} levels{at}; a chat request needs far fewer",
        param=field_name or None, code="too_deep",
    )


def _deeper_than(value: Any, limit: int) -> str | None:
    """Where `value` first nests deeper than `limit` (a path like `messages[0].content`), else None.

    Level by level, so no input can exhaust the Python stack, with only containers kept;
    the path is looked for only once the body is known to be too deep.
    """
    level = [value]
    for _ in range(limit):
        level = [c for node in level for c in (node.values() if type(node) is dict else node) if type(c) in _CONTAINERS]
        if not level:
            return None
    return _deep_path(value, limit)


_CONTAINERS = (dict, list)


def _deep_path(value: Any, limit: int) -> str:
    stack: list[tuple[Any, int, tuple | None, str | int | None]] = [(value, 1, None, None)]
    while stack:
        entry = stack.pop()
        node, depth = entry[0], entry[1]
        if depth > limit:
            return _path(entry)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1, entry, key))
    return ""


def _path(entry: tuple) -> str:
    keys: list[str | int] = []
    while entry is not None and entry[2] is not None:
        keys.append(entry[3])
        entry = entry[2]
    out = ""
    for key in reversed(keys):
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


# --- the request ---------------------------------------------------------------------


def prepare(body: Any, cfg: Config, limits: MediaLimits | None = None) -> ChatRequest:
    """Check everything about a request that can be judged before a machine is touched."""
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {json_type(body)}", code="invalid_body")
    opts = _options(body.get("tiergate"))
    stream = _stream(body)
    n = check_parameters(body, stream)
    model = _model(body)
    if model != "auto" and model not in cfg.tiers:  # before the media are decoded: this check is free
        raise NotFound(
            f"unknown model {short(model)}; use 'auto' or a tier: {', '.join(cfg.tiers)}", param="model", code="model_not_found"
        )
    parsed = parse_messages(body.get("messages"), limits or limits_for(cfg))
    mode = opts.get("mode") or cfg.routing.default_mode
    if opts.get("task"):
        task, reason = opts["task"], "chosen by the client"
    else:
        task, reason = routing.explain(parsed, cfg.routing.long_video_seconds)
    if model == "auto":
        tier = routing.pick_tier(_routes(cfg), task, mode)
    else:
        tier = model
    tier_cfg = cfg.tiers[tier]
    problem = backend_problem(tier_cfg, body, parsed, n)
    if problem is not None:
        raise problem
    use_cache = opts.get("cache", True) and cfg.cache.enabled and n == 1
    forward = {k: v for k, v in body.items() if k not in OWN_FIELDS}
    return ChatRequest(
        body=forward, canonical=parsed.canonical, tier=tier, task=task, task_reason=reason, mode=mode, stream=stream,
        use_cache=use_cache, question=(parsed.last_user or parsed.text)[-500:], pinned=model != "auto",
        backend=tier_cfg.backend, n=n, unfit=_unfit_fallbacks(cfg, tier_cfg, body, parsed, n),
    )


async def prepare_async(body: Any, cfg: Config, limits: MediaLimits | None = None, size: int = 0) -> ChatRequest:
    """`prepare`, in a thread for big bodies: images and videos are decoded and hashed."""
    if size > THREAD_ABOVE:
        return await asyncio.to_thread(prepare, body, cfg, limits)
    return prepare(body, cfg, limits)


def backend_problem(tier: TierConfig, body: dict, parsed: ParsedMessages, n: int) -> BadRequest | None:
    """Why `tier`'s backend cannot serve this request, or None. OpenAI servers take what passed here."""
    if tier.backend == "gradio":
        return gradio_backend.refusal(tier.name, parsed.turns, body, n)
    return None


def _unfit_fallbacks(cfg: Config, tier: TierConfig, body: dict, parsed: ParsedMessages, n: int) -> dict[str, str]:
    unfit: dict[str, str] = {}
    seen = {tier.name}
    name = tier.fallback
    while name and name in cfg.tiers and name not in seen:
        seen.add(name)
        problem = backend_problem(cfg.tiers[name], body, parsed, n)
        if problem is not None:
            unfit[name] = problem.message
        name = cfg.tiers[name].fallback
    return unfit


_ROUTES: dict[int, dict[str, dict[str, str]]] = {}


def _routes(cfg: Config) -> dict[str, dict[str, str]]:
    """The routing table as plain dicts, made once per config (not on every request)."""
    found = _ROUTES.get(id(cfg))
    if found is None:
        found = {t: r.model_dump() for t, r in cfg.routing.tasks.items()} or _default_routes(cfg)
        _ROUTES.clear()  # one live config at a time (a reload replaces it)
        _ROUTES[id(cfg)] = found
    return found


def _default_routes(cfg: Config) -> dict[str, dict[str, str]]:
    first = next(iter(cfg.tiers))
    return {"caption": dict.fromkeys(routing.MODES, first)}


def _options(opts: Any) -> dict:
    """The `tiergate` body field: absent or null means the defaults; anything odd is refused."""
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise BadRequest(
            f"`tiergate` must be an object like {{\"mode\": \"speed\"}}, got {json_type(opts)}", param="tiergate"
        )
    unknown = set(opts) - set(TIERGATE_OPTIONS)
    if unknown:
        raise BadRequest(
            f"unknown tiergate option(s): {', '.join(sorted(map(short, unknown)))}; use {', '.join(TIERGATE_OPTIONS)}",
            param="tiergate",
        )
    out: dict[str, Any] = {}
    mode = opts.get("mode")
    if mode is not None:
        if not isinstance(mode, str) or mode not in routing.MODES:
            raise BadRequest(f"unknown mode {short(mode)}; use one of {', '.join(routing.MODES)}", param="tiergate.mode")
        out["mode"] = mode
    task = opts.get("task")
    if task is not None and task != "auto":
        if not isinstance(task, str) or task not in routing.TASKS:
            raise BadRequest(
                f"unknown task {short(task)}; use auto or one of {', '.join(routing.TASKS)}", param="tiergate.task"
            )
        out["task"] = task
    cache = opts.get("cache")
    if cache is not None:
        if not isinstance(cache, bool):
            raise BadRequest(f"`tiergate.cache` must be true or false, got {json_type(cache)}", param="tiergate.cache")
        out["cache"] = cache
    return out


def _model(body: dict) -> str:
    model = body.get("model")
    if model is None:
        return "auto"
    if not isinstance(model, str):
        raise BadRequest(f"`model` must be a string ('auto' or a tier name), got {json_type(model)}", param="model")
    if not model:
        raise BadRequest("`model` is empty; use 'auto' or a tier name", param="model")
    return model


def _stream(body: dict) -> bool:
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise BadRequest(f"`stream` must be true or false, got {json_type(stream)}", param="stream")
    return stream


# --- the OpenAI parameters -------------------------------------------------------------


def check_parameters(body: dict, stream: bool) -> int:
    """Types and ranges of the sampling and output parameters, as an OpenAI server checks them.

    Returns `n`. Null means "not set" for every parameter, as in the OpenAI API.
    """
    max_tokens = _int(body, "max_tokens", 1)
    max_completion = _int(body, "max_completion_tokens", 1)
    min_tokens = _int(body, "min_tokens", 0)  # vLLM
    cap = max_completion if max_completion is not None else max_tokens
    if min_tokens is not None and cap is not None and min_tokens > cap:
        raise BadRequest(f"`min_tokens` ({min_tokens}) is more than the token limit ({cap})", param="min_tokens",
                         code="invalid_value")
    n = _int(body, "n", 1, MAX_N)
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0, low_open=True)
    _number(body, "min_p", 0.0, 1.0)  # vLLM
    _int(body, "top_k", -1)  # vLLM: -1 or 0 means no limit
    _number(body, "presence_penalty", -2.0, 2.0)
    _number(body, "frequency_penalty", -2.0, 2.0)
    _number(body, "repetition_penalty", 0.0, None, low_open=True)  # vLLM
    _int(body, "seed", -_INT64, _INT64 - 1)
    _bool(body, "logprobs")
    top_logprobs = _int(body, "top_logprobs", 0, 20)
    if top_logprobs is not None and body.get("logprobs") is not True:
        raise BadRequest("`top_logprobs` needs `logprobs: true`", param="top_logprobs", code="invalid_value")
    _bool(body, "parallel_tool_calls")
    _str(body, "user")
    _stop(body)
    _logit_bias(body)
    _stream_options(body, stream)
    _response_format(body)
    _tools(body)
    return 1 if n is None else n


def _bad_type(name: str, wanted: str, value: Any) -> BadRequest:
    return BadRequest(f"`{name}` must be {wanted}, got {json_type(value)}", param=name, code="invalid_type")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    wanted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    if not _is_int(value):
        raise _bad_type(name, wanted, value)
    if value < low or (high is not None and value > high):
        raise BadRequest(f"`{name}` must be {wanted}, got {short(value)}", param=name, code="invalid_value")
    return value


def _number(body: dict, name: str, low: float, high: float | None, *, low_open: bool = False) -> None:
    value = body.get(name)
    if value is None:
        return
    above = f"> {low:g}" if low_open else f">= {low:g}"
    wanted = f"a number {above}" + ("" if high is None else f" and <= {high:g}")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad_type(name, wanted, value)
    if value < low or (low_open and value == low) or (high is not None and value > high):
        raise BadRequest(f"`{name}` must be {wanted}, got {short(value)}", param=name, code="invalid_value")


def _bool(body: dict, name: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad_type(name, "true or false", value)


def _str(body: dict, name: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad_type(name, "a string", value)


def _stop(body: dict) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list):
        raise _bad_type("stop", "a string or a list of strings", stop)
    for i, item in enumerate(stop):
        if not isinstance(item, str):
            raise BadRequest(f"`stop[{i}]` must be a string, got {json_type(item)}", param=f"stop[{i}]", code="invalid_type")


def _logit_bias(body: dict) -> None:
    bias = body.get("logit_bias")
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise _bad_type("logit_bias", "an object of token id -> bias", bias)
    for key, value in bias.items():
        where = f"logit_bias[{short(key)}]"
        if not (key.isascii() and key.isdigit()):
            raise BadRequest(f"`logit_bias` keys must be token ids (digits), got {short(key)}", param="logit_bias",
                             code="invalid_value")
        if not isinstance(value, int | float) or isinstance(value, bool) or not -100 <= value <= 100:
            raise BadRequest(f"`{where}` must be a number from -100 to 100, got {short(value)}", param="logit_bias",
                             code="invalid_value")


def _stream_options(body: dict, stream: bool) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise _bad_type("stream_options", 'an object like {"include_usage": true}', options)
    if not stream:
        raise BadRequest("`stream_options` is only allowed with `stream: true`", param="stream_options",
                         code="invalid_value")
    for key in ("include_usage", "continuous_usage_stats", "include_obfuscation"):
        value = options.get(key)
        if value is not None and not isinstance(value, bool):
            raise _bad_type(f"stream_options.{key}", "true or false", value)


_RESPONSE_FORMATS = ("text", "json_object", "json_schema", "structural_tag")


def _response_format(body: dict) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _bad_type("response_format", 'an object like {"type": "json_object"}', fmt)
    kind = fmt.get("type")
    if kind not in _RESPONSE_FORMATS:
        raise BadRequest(
            f"`response_format.type` must be one of {', '.join(_RESPONSE_FORMATS)}, got {short(kind)}",
            param="response_format.type", code="invalid_value",
        )
    if kind == "json_schema":
        schema = fmt.get("json_schema")
        if not isinstance(schema, dict):
            raise _bad_type("response_format.json_schema", 'an object like {"name": ..., "schema": {...}}', schema)
        if not isinstance(schema.get("name"), str) or not schema["name"]:
            raise BadRequest("`response_format.json_schema.name` must be a non-empty string",
                             param="response_format.json_schema.name", code="invalid_value")
        if schema.get("schema") is not None and not isinstance(schema["schema"], dict):
            raise _bad_type("response_format.json_schema.schema", "an object (a JSON schema)", schema["schema"])


def _tools(body: dict) -> None:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad_type("tools", "a list of tools", tools)
        for i, tool in enumerate(tools):
            where = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise BadRequest(f'`{where}` must be an object with "type": "function"', param=where, code="invalid_value")
            fn = tool.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise BadRequest(f"`{where}.function.name` must be a non-empty string", param=f"{where}.function.name",
                                 code="invalid_value")
            if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
                raise _bad_type(f"{where}.function.parameters", "an object (a JSON schema)", fn["parameters"])
            names.append(fn["name"])
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto"):
        return
    if choice == "required":
        if not names:
            raise BadRequest('`tool_choice: "required"` needs `tools`', param="tool_choice", code="invalid_value")
        return
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise BadRequest('`tool_choice` must be like {"type": "function", "function": {"name": ...}}',
                             param="tool_choice", code="invalid_value")
        if name not in names:
            raise BadRequest(f"`tool_choice` names the function {short(name)}, which is not in `tools`",
                             param="tool_choice", code="invalid_value")
        return
    raise BadRequest(f'`tool_choice` must be "none", "auto", "required" or a named function, got {short(choice)}',
                     param="tool_choice", code="invalid_value")
