"""The one interface every model-server backend implements.

A backend knows how to talk to one kind of worker (an OpenAI-compatible server, the
upstream Gradio web demo, ...). The gateway only ever speaks OpenAI to its clients, so
every backend takes an OpenAI chat body and gives back OpenAI JSON or OpenAI SSE bytes.

Errors a backend raises reach clients, so they never contain the worker's address (a
private IP is nobody's business outside); they name the tier (`tier`, when the caller
passes it) and say what a person can do about the failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

IDENTITY_HEADER = "x-tiergate-instance"


@dataclass(frozen=True)
class Identity:
    """What a worker must show to be taken for the instance the gateway started.

    Any server can answer 200 on a port: a stranger's process (or another test's worker)
    on the configured port must not be taken for ours. `auto`: the stand-in worker names
    its instance in the `x-tiergate-instance` header, and a server that names none (vLLM)
    must list the tier's model; `model`: always the model check; `none`: any answer.
    """

    instance: str
    model: str = ""
    mode: Literal["auto", "model", "none"] = "auto"


class Backend(Protocol):
    async def health(self, base_url: str, expect: Identity) -> bool:
        """True once the worker can answer a request and shows the expected identity (`ready`)."""
        ...

    async def complete(self, base_url: str, body: dict, *, tier: str = "") -> dict:
        """A non-streamed `chat.completion` object; raises `UpstreamError` on failure."""
        ...

    def stream(self, base_url: str, body: dict, *, tier: str = "") -> AsyncIterator[bytes]:
        """OpenAI SSE bytes (`data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`).

        The first `__anext__` raises `UpstreamError` when the worker refuses the
        request, so the caller can still answer with a proper status code before any
        byte of the stream has been sent.
        """
        ...

    async def aclose(self) -> None: ...
