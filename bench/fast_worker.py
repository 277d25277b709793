"""An OpenAI-style worker fast enough that a gateway in front of it is the bottleneck.

Plain asyncio on a raw socket (HTTP/1.1 keep-alive, no framework): a canned completion, or
a stream of `--chunks` SSE events. `--serial-ms 1.5` makes it a busy model instead: it
works on one request at a time for that long (blocking, as a GPU is busy), so it answers at
most ~650 requests a second however many wait, and a gateway in front of it must keep up.
It answers what the gateway needs of a worker: `/health` with its identity, `/v1/models`,
`POST /v1/chat/completions`. For benchmarks only.

    python bench/fast_worker.py --port 18100 [--serial-ms 1.5] [--chunks 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "A red square on white."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14},
}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "bench", "object": "model"}]}).encode()


def chunk(delta: dict, finish: str | None = None) -> bytes:
    event = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    data = b"data: " + json.dumps(event).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class Worker(asyncio.Protocol):
    def __init__(self, busy: float, chunks: int) -> None:
        self.busy = busy
        self.chunks = chunks
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length") or 0)
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4:head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            asyncio.ensure_future(self.answer(method, path, body))

    async def answer(self, method: str, path: str, body: bytes) -> None:
        t = self.transport
        assert t is not None
        if path == "/health":
            ident = os.environ.get("TIERGATE_INSTANCE_ID", "")
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-tiergate-instance: %s\r\n\r\n" % ident.encode())
            return
        if path == "/v1/models":
            t.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(MODELS), MODELS))
            return
        if self.busy:
            time.sleep(self.busy)  # noqa: ASYNC251 - the model is busy: nothing else is answered meanwhile
        stream = b'"stream":true' in body or b'"stream": true' in body
        if not stream:
            t.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(COMPLETION), COMPLETION))
            return
        t.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        t.write(chunk({"role": "assistant", "content": ""}))
        for i in range(self.chunks):
            t.write(chunk({"content": f"w{i} "}))
            await asyncio.sleep(0)  # one event per write, as a token-by-token server sends them
        t.write(chunk({}, "stop"))
        done = b"data: [DONE]\n\n"
        t.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--serial-ms", type=float, default=0.0, help="work on one request at a time for this long")
    ap.add_argument("--chunks", type=int, default=200)
    args = ap.parse_args()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Worker(args.serial_ms / 1000, args.chunks), "127.0.0.1", args.port)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
