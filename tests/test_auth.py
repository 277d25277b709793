"""Logins: guessing is limited per source and per user, counted in Redis, and never stalls the gateway.

The limiter is tested in-process against the real Redis server of the session; then a
real gateway with `[gateway] require_login = true` is attacked over raw HTTP: Gradio's own
`/login` route and the Admin tab's login share one limit, and a slow password check does
not stop `/healthz` from answering.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from router.auth import LoginLimiter, Throttled, hash_password, source_key
from router.config import Config, parse_config
from tests.conftest import GatewayProc, start_gateway, tier_toml, wait_for, write_config
from tests.test_ui_security import RawGradio

TOKEN = "auth-test-token"
TIER = "authtier"
SLOW_USER, SLOW_PASSWORD = "slowpoke", "a slow but right password"
SLOW_ITERATIONS = 1_500_000  # about a second of PBKDF2: long enough to see whether the event loop stalls


def config(users: str = "") -> Config:
    text = tier_toml(TIER) + (f"\n[admin]\nusers = [{users}]\n" if users else "")
    return parse_config(text, "auth-test.toml")


def run(test) -> None:
    """Run an async test body with limiters on a fresh asyncio client of the session's Redis."""
    asyncio.run(test())


@pytest.fixture
def make(redis_url: str):
    """A factory of limiters sharing one fresh key prefix (as gateways sharing a Redis do)."""
    prefix = f"tg:test-login:{uuid.uuid4().hex}:"

    def factory(**kw) -> LoginLimiter:
        return LoginLimiter(aioredis.Redis.from_url(redis_url), prefix=prefix, **kw)

    return factory


def test_five_failures_are_free_then_each_locks_twice_as_long(make) -> None:
    async def body() -> None:
        limiter = make(first=0.3)
        waits = [await limiter.failed("10.0.0.1", "bob") for _ in range(7)]
        assert waits[:4] == [0, 0, 0, 0]
        assert waits[4] == pytest.approx(0.3) and waits[5] == pytest.approx(0.6) and waits[6] == pytest.approx(1.2)
        assert 0 < await limiter.retry_after("10.0.0.1", "bob") <= 1.2

    run(body)


def test_a_locked_out_attempt_is_refused_without_looking_at_the_password(make) -> None:
    async def body() -> None:
        limiter = make(first=0.3)
        checked = 0

        async def check(ok: bool) -> bool:
            nonlocal checked
            checked += 1
            return ok

        for _ in range(5):
            assert await limiter.attempt("10.0.0.2", "eve", lambda: check(False)) is False
        with pytest.raises(Throttled) as locked:
            await limiter.attempt("10.0.0.2", "eve", lambda: check(True))  # even the right password
        assert checked == 5 and locked.value.retry_after >= 1
        deadline = time.monotonic() + 10
        while await limiter.retry_after("10.0.0.2", "eve") > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await limiter.attempt("10.0.0.2", "eve", lambda: check(True)) is True  # the lockout passed

    run(body)


def test_gateways_sharing_a_redis_count_together(make) -> None:
    async def body() -> None:
        one, two = make(), make()  # two clients: two gateway processes
        for limiter in (one, two, one, two, one):
            await limiter.failed("10.0.0.3", "admin")
        assert await two.retry_after("10.0.0.3", "admin") > 0
        assert await one.retry_after("10.0.0.3", "admin") > 0

    run(body)


def test_counted_per_user_across_sources_and_per_source_across_users(make) -> None:
    async def body() -> None:
        limiter = make()
        for n in range(5):
            await limiter.failed(f"10.1.0.{n}", "carol")  # one name guessed from five hosts
        assert await limiter.retry_after("10.1.0.99", "carol") > 0
        assert await limiter.retry_after("10.1.0.99", "dave") == 0
        for n in range(5):
            await limiter.failed("10.2.0.1", f"user{n}")  # five names guessed from one host
        assert await limiter.retry_after("10.2.0.1", "frank") > 0
        assert await limiter.retry_after("10.2.0.2", "frank") == 0

    run(body)


def test_a_right_password_clears_that_name(make) -> None:
    async def body() -> None:
        limiter = make()
        for _ in range(4):
            await limiter.failed("10.3.0.1", "gina")
        await limiter.succeeded("10.3.0.1", "gina")
        await limiter.failed("10.3.0.2", "gina")  # the name's count started again from zero
        assert await limiter.retry_after("10.3.0.2", "gina") == 0

    run(body)


def test_an_ipv6_host_counts_as_its_whole_64() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2::ffff") != source_key("2001:db8:1:3::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_login_checks_the_password_off_the_event_loop(make) -> None:
    cfg = config(f'{{name = "{SLOW_USER}", password_hash = "{hash_password(SLOW_PASSWORD, iterations=SLOW_ITERATIONS)}"}}')

    async def body() -> None:
        limiter = make()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        before = ticks
        role = await limiter.login(cfg, "10.4.0.1", SLOW_USER, SLOW_PASSWORD)
        during = ticks - before
        task.cancel()
        assert role == "admin"
        assert during >= 10, f"the event loop stalled while the password was checked ({during} ticks)"

    run(body)


def test_a_malformed_hash_is_refused_at_load_and_never_crashes_a_login() -> None:
    """`check` refuses it with its line (test_config has the details); the check itself stays safe anyway."""
    from router.auth import verify_password
    from router.config import ConfigError

    with pytest.raises(ConfigError, match=r":\d+: admin.users.0.password_hash"):
        config('{name = "broken", password_hash = "pbkdf2_sha256$many$zz$yy"}')
    assert verify_password("anything", "pbkdf2_sha256$many$zz$yy") is False


def test_failed_logins_are_logged_without_the_password(make, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        await make().login(config(), "10.6.0.1", "mallory", "hunter2-secret-guess")

    with caplog.at_level(logging.WARNING, logger="tiergate.auth"):
        run(body)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "failed login" in logged and "mallory" in logged and "10.6.0.1" in logged
    assert "hunter2" not in logged


# --- a gateway with `require_login` ------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("auth")
    slow = hash_password(SLOW_PASSWORD, iterations=SLOW_ITERATIONS)
    path = write_config(tmp, tier_toml(TIER), gateway="require_login = true")
    path.write_text(path.read_text() + f'\n[admin]\nusers = [{{name = "{SLOW_USER}", password_hash = "{slow}"}}]\n')
    proc = start_gateway(path, redis_url=redis_url, env={"TIERGATE_ADMIN_TOKEN": TOKEN}, ui=True)
    yield proc
    proc.stop()


@pytest.fixture
def counters(redis_url: str) -> Iterator[None]:
    """Every test starts (and leaves) with no failed-login counts: all tests come from 127.0.0.1."""
    r = redis.Redis.from_url(redis_url)

    def clear() -> None:
        for key in r.scan_iter("tg:login:*"):
            r.delete(key)

    clear()
    yield
    clear()
    r.close()


def gradio_login(gw: GatewayProc, user: str, password: str, http: httpx.Client | None = None) -> httpx.Response:
    client = http or httpx.Client(base_url=gw.url, timeout=60, trust_env=False)
    try:
        return client.post("/login", data={"username": user, "password": password})
    finally:
        if http is None:
            client.close()


def test_gradio_login_page_is_throttled(gw: GatewayProc, counters: None) -> None:
    for _ in range(5):
        assert gradio_login(gw, "admin", "wrong-guess-123").status_code == 400
    locked = gradio_login(gw, "admin", TOKEN)  # the right password, during the lockout
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    assert "Too many failed logins" in locked.text
    log = gw.output()
    assert "failed login for user 'admin' from 127.0.0.1" in log and "wrong-guess-123" not in log


def test_admin_tab_login_shares_the_limit(gw: GatewayProc, counters: None) -> None:
    with httpx.Client(base_url=gw.url, timeout=60, trust_env=False) as http:
        assert gradio_login(gw, "admin", TOKEN, http).status_code == 200  # through the login page first
        raw = RawGradio(gw.url, http)
        for _ in range(5):
            assert "Wrong user or password" in raw.call("admin_login", ["admin", "tab-guess"], session="tab")["raw"]
        refused = raw.call("admin_login", ["admin", TOKEN], session="tab")
        assert "Too many failed logins" in refused["raw"] and "Logged in as" not in refused["raw"]
    assert gradio_login(gw, "admin", TOKEN).status_code == 429  # the login page counts the tab's failures


def test_healthz_answers_while_a_slow_login_is_checked(gw: GatewayProc, counters: None) -> None:
    result: dict[str, httpx.Response] = {}
    login = threading.Thread(target=lambda: result.update(r=gradio_login(gw, SLOW_USER, SLOW_PASSWORD)))
    answered = 0
    with httpx.Client(base_url=gw.url, timeout=60, trust_env=False) as http:
        login.start()
        while login.is_alive():
            if http.get("/healthz").status_code == 200 and login.is_alive():
                answered += 1
            time.sleep(0.02)
    login.join()
    assert result["r"].status_code == 200
    assert answered >= 5, f"/healthz answered only {answered} time(s) while the password was checked"


def test_a_ui_login_cookie_opens_the_api(gw: GatewayProc, counters: None) -> None:
    """A person logged in to the UI may use the API from the same browser (e.g. the docs page)."""
    with httpx.Client(base_url=gw.url, timeout=30, trust_env=False) as c:
        assert c.get("/api/tiers").status_code == 401
        login = gradio_login(gw, "admin", TOKEN, http=c)
        assert login.status_code == 200, login.text
        assert c.get("/api/tiers").status_code == 200  # the login cookie now travels with the client


def test_the_limit_lifts_after_the_lockout(gw: GatewayProc, counters: None) -> None:
    for _ in range(5):
        gradio_login(gw, "admin", "another-wrong-guess")
    assert gradio_login(gw, "admin", TOKEN).status_code == 429
    wait_for(lambda: gradio_login(gw, "admin", TOKEN).status_code == 200, timeout=15, interval=0.3,
             what="the one-second lockout to pass")


def test_parallel_guesses_are_checked_one_at_a_time(make) -> None:
    """A burst of guesses must not all pass the gate before the first failure is counted."""

    async def body() -> None:
        limiter = make()
        checked = 0

        async def slow_wrong() -> bool:
            nonlocal checked
            checked += 1
            await asyncio.sleep(0.2)  # a password check takes a while
            return False

        async def guess() -> str:
            try:
                await limiter.attempt("10.7.0.1", "admin", slow_wrong)
                return "checked"
            except Throttled:
                return "refused"

        outcomes = await asyncio.gather(*(guess() for _ in range(40)))
        assert checked == outcomes.count("checked") == 1 and outcomes.count("refused") == 39
        for _ in range(4):  # one after another, the free failures run out as usual
            await limiter.attempt("10.7.0.1", "admin", slow_wrong)
        assert checked == 5 and await limiter.retry_after("10.7.0.1", "admin") > 0

    run(body)
