"""The stand-in GPU worker: a fake OpenAI-compatible model server for demos and tests.

It behaves like a vLLM machine serving Qwen3-VL from the gateway's point of view (port
closed while "loading the model", `/health`, `/v1/models`, `/v1/chat/completions` with
streaming, paced tokens and `n` answers, an optional readiness callback, a clean exit on
SIGTERM at any moment) but needs no GPU. Its answers are deterministic and say plainly
that they are simulated, while describing real properties of the input (text, image
sizes, video sizes), so a demo shows that requests really travelled end to end.

Every response carries `x-tiergate-instance: $TIERGATE_INSTANCE_ID`, so a gateway can tell
the worker it started from a stranger's server that happens to hold the same port.

It is a program of its own, beside the gateway (`router/`), split by concern:

* `cli.py`: the flags and the entry points (`tiergate worker ...`, `python -m worker ...`);
* `serve.py`: the process: signals, the boot delay, the listening socket, the callback;
* `app.py`: the HTTP routes;
* `answer.py`: reading a conversation and composing the reply.

This file imports nothing on purpose: `python -m worker` must reach its signal handler
before any heavy import (see `cli.catch_signals_early`).
"""
