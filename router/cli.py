"""The `tiergate` command: serve, check, worker, status, doctor, simulate, hash-password."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import sys
import time

from .config import Config, ConfigError, load_config, resolve_path

EPILOG = """\
examples:
  tiergate serve                      gateway + UI on http://127.0.0.1:7860 (default tiers.toml)
  tiergate check --config tiers.toml  validate a config; exit 2 with FILE:LINE: message per problem
  tiergate status                     what every tier is doing and what it cost
  tiergate worker --port 18001        a stand-in GPU worker (no model) for demos and tests
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
    from .server import serve

    return serve(cfg, args.host, args.port, args.log_level, workers=args.workers)


def cmd_check(args: argparse.Namespace) -> int:
    path = resolve_path(args.config)
    cfg = _config(args.config)
    n = sum(len(t.instances) for t in cfg.tiers.values())
    print(f"{path}: ok ({len(cfg.tiers)} tiers, {n} instances, {len(cfg.routing.tasks)} routed tasks)")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.cli import run

    return run(args)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    rows = asyncio.run(_status_rows(cfg))
    print(format_status(rows))
    return 0


async def _status_rows(cfg: Config) -> list[dict]:
    from .ledger import Ledger
    from .providers import billed
    from .redis_server import open_redis
    from .state import State
    from .status import tiers_status

    handle = open_redis(cfg)  # the read side only: no supervisor, no providers
    try:
        return await tiers_status(cfg, State(handle.client), Ledger(handle.client), billed(cfg))
    finally:
        await handle.client.aclose()


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
    from .doctor import doctor

    report, code = asyncio.run(doctor(_config(args.config)))
    print(report)
    return code


def cmd_simulate(args: argparse.Namespace) -> int:
    from . import simulate

    return simulate.run(args, _config(args.config))


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from .auth import hash_password

    pw = args.password or getpass.getpass("password: ")
    print(hash_password(pw))
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

    p = sub.add_parser("simulate", help="replay a request trace: cost and waits of a setting, before deploying it")
    config_arg(p)
    if importlib.util.find_spec("router.simulate") is not None:
        from . import simulate

        simulate.add_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("hash-password", help="hash an admin password for [admin] users in tiers.toml")
    p.add_argument("password", nargs="?", help="the password (asked for if omitted)")
    p.set_defaults(func=cmd_hash_password)
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
