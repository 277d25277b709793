"""The `tiergate` command: serve, check, worker, status, doctor, simulate, export-trace, hash-password, api-key."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

from .config import Config, ConfigError, load_config, resolve_path

EPILOG = """\
examples:
  tiergate serve                         gateway + UI on http://127.0.0.1:7860 (default tiers.toml)
  tiergate check --config tiers.toml     validate a config; exit 2 with FILE:LINE: message per problem
  tiergate status                        what every tier is doing and what it cost
  tiergate worker --port 18001           a stand-in GPU worker (no model) for demos and tests
  tiergate simulate --synthetic sparse   what a setting would cost on generated traffic, before deploying it
  tiergate api-key --name ci             a key for scripts when require_login = true
"""


def _config(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _config(args.config)  # a broken config fails before anything heavy is imported
    # Gradio and gradio_client report usage (with worker URLs) unless told not to.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Uploads in a folder of the gateway's own, not the shared /tmp/gradio other users can read.
    uploads = cfg.data_dir() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    uploads.chmod(0o700)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(uploads))
    from .server import serve

    return serve(cfg, args.host, args.port, args.log_level, workers=args.workers, access_log=args.access_log,
                 ui=not args.no_ui)


def cmd_check(args: argparse.Namespace) -> int:
    path = resolve_path(args.config)
    cfg = _config(args.config)
    n = sum(len(t.instances) for t in cfg.tiers.values())
    print(f"{path}: ok ({len(cfg.tiers)} tiers, {n} instances, {len(cfg.routing.tasks)} routed tasks)")
    if cfg.api_key_hashes() and not cfg.gateway.require_login:
        print("note: API keys are configured but [gateway] require_login is false, so nothing asks for them")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.cli import run

    return run(args)


def cmd_status(args: argparse.Namespace) -> int:
    from .redis_server import NoState, StateUnreachable

    cfg = _config(args.config)
    try:
        rows, where = asyncio.run(_status_rows(cfg))
    except NoState as exc:
        hint = "" if cfg.redis_url() else (
            ", or run `status` in the gateway's folder (a relative data_dir is relative to it) or with its --config"
        )
        print(f"tiergate status: {exc}.\nNothing to show: start a gateway with `tiergate serve`{hint}.", file=sys.stderr)
        return 1
    except StateUnreachable as exc:
        print(f"tiergate status: {exc}", file=sys.stderr)
        return 1
    print(format_status(rows))
    print(f"(from {where})", file=sys.stderr)
    return 0


async def _status_rows(cfg: Config) -> tuple[list[dict], str]:
    """Read the state without being a gateway: no supervisor, no providers, nothing left running."""
    from .ledger import Ledger
    from .providers import billed
    from .redis_server import NoState, open_for_reading
    from .state import PREFIX, State
    from .status import tiers_status

    async with open_for_reading(cfg) as state:
        if not await state.client.exists(f"{PREFIX}epoch"):
            raise NoState(f"no gateway has used {state.where} (it has no {PREFIX}epoch key)")
        rows = await tiers_status(cfg, State(state.client), Ledger(state.client), billed(cfg))
        return rows, state.where


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_status(rows: list[dict]) -> str:
    head = ("TIER", "GPU", "STATE", "INSTANCES", "IN FLIGHT", "IDLE FOR", "STARTS", "GPU TIME", "COST", "ALWAYS-ON", "SAVED")
    lines = [head]
    for t in rows:
        up = sum(1 for i in t["instances"] if i["state"] == "ready")
        lines.append((
            t["name"], t["gpu"], t["state"] + (f" ({t['reason'][:40]})" if t["reason"] else ""),
            f"{up}/{len(t['instances'])}", f"{t['inflight']}+{t['queued']}q", _dur(t["idle_for"]), str(t["starts"]),
            _dur(t["gpu_seconds"]), f"{t['cost']:.2f}", f"{t['always_on_cost']:.2f}", f"{t['saving']:.2f}",
        ))
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor, quiet_sdk_logging

    cfg = _config(args.config)
    quiet_sdk_logging()
    report, code = asyncio.run(doctor(cfg))
    print(report)
    return code


def cmd_simulate(args: argparse.Namespace) -> int:
    from . import simulate

    return simulate.run(args, _config(args.config))


def cmd_export_trace(args: argparse.Namespace) -> int:
    from . import simulate

    return simulate.run_export(args, _config(args.config))


class _Refused(Exception):
    """A secret that cannot be used; the message says why."""


def _read_secret(what: str) -> str:
    """A secret typed twice at a terminal, or the first line of stdin when it is not one (pipes, scripts)."""
    import getpass

    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise _Refused(f"no {what} on stdin (pipe it in, e.g. `printf '%s\\n' \"$PW\" | tiergate hash-password`)")
        secret = line.removesuffix("\n").removesuffix("\r")
    else:
        try:
            secret = getpass.getpass(f"{what}: ")
            if secret and getpass.getpass(f"{what} again: ") != secret:
                raise _Refused(f"the two {what}s differ; nothing was hashed")
        except EOFError:
            raise _Refused(f"no {what} was typed") from None
    if not secret:
        raise _Refused(f"an empty {what} cannot be used")
    return secret


def cmd_hash_password(args: argparse.Namespace) -> int:
    from .auth import hash_password

    try:
        pw = args.password if args.password is not None else _read_secret("password")
        if not pw:
            raise _Refused("an empty password cannot be used")
    except _Refused as exc:
        print(f"tiergate hash-password: {exc}", file=sys.stderr)
        return 2
    print(hash_password(pw))
    return 0


def cmd_api_key(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from .apikeys import hash_api_key, new_api_key

    key = new_api_key()
    label = f"{args.name}, " if args.name else ""
    print(key)
    print(f'"{hash_api_key(key)}",  # {label}made {datetime.now(UTC):%Y-%m-%d}')
    print(
        "\nThe first line is the key: it is shown only now; give it to the script (e.g. the openai client's api_key,\n"
        "or `Authorization: Bearer <key>`). The second line is its hash: add it to `api_keys = [...]` under\n"
        "[gateway] in tiers.toml (or, without the comment, to $TIERGATE_API_KEYS, comma-separated). Keys are\n"
        "asked for only when [gateway] require_login = true. To revoke a key, delete its hash.",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiergate",
        description="Serve a multimodal model from GPU machines that run only while someone uses them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="tiers.toml to use (default: $TIERGATE_CONFIG, ./tiers.toml, then the packaged default)")

    p = sub.add_parser("serve", help="run the gateway: UI at /, API under /v1 and /api")
    config_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-ui", action="store_true", help="serve the HTTP API only, without the Gradio UI")
    p.add_argument("--access-log", action="store_true",
                   help="log one line per HTTP request (off by default: it costs about a tenth of a cache hit)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="gateway processes sharing the port, one embedded Redis and one cache (default 1); "
                        "the UI stays in the first")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate a config; exit 2 printing FILE:LINE: message per problem")
    config_arg(p)
    p.set_defaults(func=cmd_check)

    from worker.cli import add_arguments as worker_arguments  # argparse only: cheap for every command

    p = sub.add_parser("worker", help="a stand-in GPU worker (OpenAI-compatible, no model) for demos and tests")
    worker_arguments(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("status", help="a table of tiers: state, instances, in flight, idle for, starts, GPU time, cost")
    config_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("doctor", help="check cloud credentials and permissions for every ECS instance")
    config_arg(p)
    p.set_defaults(func=cmd_doctor)

    from . import simulate

    p = sub.add_parser("simulate", help="replay a request trace: cost and waits of a setting, before deploying it")
    config_arg(p)
    simulate.add_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("export-trace", help="the gateway's own recorded requests as a trace `simulate` replays")
    config_arg(p)
    simulate.add_export_arguments(p)
    p.set_defaults(func=cmd_export_trace)

    p = sub.add_parser(
        "hash-password",
        help="hash a password for [admin] users in tiers.toml",
        description="Print a password hash for [admin] users. At a terminal the password is asked for twice; "
        "otherwise the first line of stdin is the password. An empty password is refused.",
    )
    p.add_argument("password", nargs="?", help="the password (visible to other users in `ps`: prefer the prompt or stdin)")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser(
        "api-key",
        help="make an API key for scripts (require_login = true): prints the key once, and its hash for tiers.toml",
    )
    p.add_argument("--name", default="", help="who or what the key is for; written as a comment after the hash")
    p.set_defaults(func=cmd_api_key)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    t0 = time.monotonic()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tiergate simulate | head`: the reader left; not an error
        sys.stdout = None  # type: ignore[assignment]
        return 0
    finally:
        logging.getLogger("tiergate").debug("%s took %.1fs", args.command, time.monotonic() - t0)


if __name__ == "__main__":
    raise SystemExit(main())
