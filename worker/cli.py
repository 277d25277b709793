"""The worker's flags and entry points; light on purpose (argparse and signal only).

`tiergate worker` builds its parser from `add_arguments` for every `tiergate` command, and
`python -m worker` installs `catch_signals_early` before anything else is imported, so
nothing heavy may be imported at the top of this module.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

DEFAULT_MODEL = "Qwen/Qwen3-VL-4B-Instruct"
CALLBACK_TOKEN_ENV = "TIERGATE_CALLBACK_TOKEN"
INSTANCE_ID_ENV = "TIERGATE_INSTANCE_ID"
FAIL_BOOT_EXIT_CODE = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_caught: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _caught.append(signum)


def catch_signals_early() -> None:
    """Remember SIGTERM/SIGINT from now on, until the server installs its own handler.

    Importing the server (uvicorn, starlette, httpx) takes a few hundred milliseconds, more
    on a loaded machine; a gateway stopping a tier in that window sends SIGTERM, which by
    default kills the process with status -15. Remembered instead, it ends the boot cleanly
    with status 0 as soon as the server starts (`serve._Stop`).
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, _remember)


def early_signal() -> int | None:
    """The stop signal that arrived before the server's own handler, if any."""
    return _caught[0] if _caught else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `tiergate worker` flags to `parser` (shared by `tiergate` and `python -m worker`)."""
    parser.add_argument(
        "--port", metavar="N", type=int, required=True,
        help="TCP port to serve the OpenAI-compatible API on (0 picks a free port and prints it).",
    )
    parser.add_argument(
        "--host", metavar="ADDRESS", default="127.0.0.1",
        help="Address to listen on (default: %(default)s, only this machine).",
    )
    parser.add_argument(
        "--boot-seconds", metavar="S", type=float, default=0.0,
        help="Pretend to load the model for this many seconds before opening the port, like vLLM does; "
        "clients see 'connection refused' meanwhile (default: %(default)s).",
    )
    parser.add_argument(
        "--model", metavar="NAME", default=DEFAULT_MODEL,
        help="Model name to report in /v1/models and in answers (default: %(default)s).",
    )
    parser.add_argument(
        "--tokens-per-second", metavar="R", type=float, default=50.0,
        help="Simulated generation speed per request; 0 means as fast as possible (default: %(default)s).",
    )
    parser.add_argument(
        "--ready-url", metavar="URL", default=None,
        help="Full URL to POST once the port is open, announcing readiness the way a GPU machine calls the "
        f"gateway's /api/instances/{{id}}/ready. Sent with 'Authorization: Bearer ${CALLBACK_TOKEN_ENV}'.",
    )
    parser.add_argument(
        "--instance-id", metavar="ID", default=None,
        help=f"Instance id shown in the x-tiergate-instance header of every response, in the readiness callback "
        f"and in logs (default: ${INSTANCE_ID_ENV}, which the gateway sets).",
    )
    parser.add_argument(
        "--stop-seconds", type=float, default=0.0, metavar="S",
        help="After SIGTERM, take this long to exit, like a model server releasing GPU memory "
        "(the gateway shows the tier as 'stopping' meanwhile).",
    )
    parser.add_argument(
        "--fail-boot", action="store_true",
        help=f"Simulate a model that fails to load: wait --boot-seconds, print an error and exit with code "
        f"{FAIL_BOOT_EXIT_CODE} without opening the port.",
    )


def run(args: argparse.Namespace) -> int:
    """Boot, serve until SIGTERM/SIGINT, and return the process exit code (0 = clean)."""
    catch_signals_early()  # `tiergate worker` comes here straight from its parser
    print(f"tiergate worker: starting (pid {os.getpid()})", file=sys.stderr, flush=True)
    from .serve import run as serve  # the heavy imports: a stop signal meanwhile is remembered

    return serve(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m worker`."""
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Simulated GPU worker: an OpenAI-compatible chat server that needs no GPU, "
        "for tiergate demos and tests.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
