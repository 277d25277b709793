"""Logins: PBKDF2-SHA256 password hashes in tiers.toml (never the passwords), roles, and a limit on guessing.

A login is judged off the event loop (one PBKDF2 check takes a CPU for a good fraction of a
second, and would stall every request meanwhile). Failed logins are counted in Redis per
source address and per user name, so every gateway sharing that Redis counts together:
after `FREE_FAILURES` failures, each further one locks that source and that name out for
twice as long as the one before (1 s, 2 s, 4 s ... up to `MAX_LOCKOUT`). A locked-out
attempt is refused without looking at the password at all, so guessing during a lockout
gains nothing (a right password is refused too); so is an attempt made while another one
for the same source or name is still being checked, so parallel guesses cannot outrun
the count. Failures are logged with the user name
and the source, never the password.

Use it for any credential check (the UI's login page and admin tab here; the admin API's
bearer token can go through `LoginLimiter.attempt` the same way).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any

from .config import Config

log = logging.getLogger("tiergate.auth")

ITERATIONS = 240_000
ROLES = ("admin", "presenter")
FREE_FAILURES = 5  # failures allowed before the back-off starts
FIRST_LOCKOUT = 1.0  # seconds, doubled with every further failure
MAX_LOCKOUT = 900.0
FORGET_AFTER = 3600.0  # a source or name with no failure for this long starts from zero again
BUSY_TIMEOUT = 30.0  # a check in progress holds its source and name at most this long (if its gateway dies)
PREFIX = "tg:login:"
_DUMMY_HASH = f"pbkdf2_sha256${ITERATIONS}${'00' * 16}${'00' * 32}"


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def parse_hash(encoded: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, digest) of a `pbkdf2_sha256$N$SALT_HEX$HASH_HEX` hash; ValueError saying what is wrong."""
    parts = str(encoded).split("$")
    if len(parts) != 4 or parts[0] != "pbkdf2_sha256":
        raise ValueError("a password hash looks like pbkdf2_sha256$ITERATIONS$SALT_HEX$HASH_HEX (tiergate hash-password)")
    try:
        iterations, salt, digest = int(parts[1]), bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
    except ValueError:
        raise ValueError("the iterations of a password hash must be a number and its salt and hash hex digits") from None
    if iterations < 1 or not salt or not digest:
        raise ValueError("a password hash needs a positive iteration count, a salt and a hash")
    return iterations, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """True for the right password; False for a wrong one or a malformed hash (never raises)."""
    try:
        iterations, salt, digest = parse_hash(encoded)
    except ValueError:
        log.error("a password hash in [admin] users is malformed; run `tiergate check`")
        return False
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hmac.compare_digest(candidate, digest)


def role_of(cfg: Config, user: str) -> str:
    """The role of a user name: a configured user's `role` (admin when the config has none), else admin
    (the `admin` user of $TIERGATE_ADMIN_TOKEN)."""
    for u in cfg.admin.users:
        if u.name == user:
            role = getattr(u, "role", "admin")
            return role if role in ROLES else "admin"
    return "admin"


def login_role(cfg: Config, user: str, password: str) -> str | None:
    """The role the credentials give (`admin` or `presenter`), or None. Slow on purpose: call it in a thread.

    A configured user, or the user `admin` with $TIERGATE_ADMIN_TOKEN as password. An unknown
    name costs one PBKDF2 check too, so the time taken does not tell which names exist.
    """
    token = os.environ.get("TIERGATE_ADMIN_TOKEN", "")
    if token and user == "admin" and hmac.compare_digest(password.encode(), token.encode()):
        return "admin"
    found = [u for u in cfg.admin.users if u.name == user]
    if not found:
        verify_password(password, _DUMMY_HASH)
        return None
    if any(verify_password(password, u.password_hash) for u in found):
        return role_of(cfg, user)
    return None


def check_login(cfg: Config, user: str, password: str) -> bool:
    """True for any valid login (whatever its role). Slow on purpose: call it in a thread."""
    return login_role(cfg, user, password) is not None


def source_key(address: str) -> str:
    """Who is guessing: an IPv4 address, or the /64 of an IPv6 one (one host owns a whole /64)."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address.strip()[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Throttled(Exception):
    """Too many failed logins from this source or for this user: try again after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"too many failed logins; try again in {self.retry_after} s")


# KEYS: the counters to check or bump. ARGV: now is taken from Redis (one clock for every gateway).
_RETRY_AFTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local wait = 0
for _, key in ipairs(KEYS) do
  local untl = tonumber(redis.call('HGET', key, 'until') or '0')
  if untl - now > wait then wait = untl - now end
end
return tostring(wait)
"""
# The gate of an attempt: refused while locked out, or while another attempt for the same
# source or name is being checked (a burst of parallel guesses would otherwise all pass the
# gate before the first failure is counted). Returns the wait in seconds, or -1 when busy.
_BEGIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS / 2
local wait = 0
for i = 1, n do
  local untl = tonumber(redis.call('HGET', KEYS[i], 'until') or '0')
  if untl - now > wait then wait = untl - now end
end
if wait > 0 then return tostring(wait) end
for i = n + 1, #KEYS do
  if not redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[1]) then
    for j = n + 1, i - 1 do redis.call('DEL', KEYS[j]) end
    return '-1'
  end
end
return '0'
"""
_FAILED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local free, first, cap, forget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local wait = 0
for _, key in ipairs(KEYS) do
  local n = redis.call('HINCRBY', key, 'n', 1)
  local lock = 0
  if n >= free then
    lock = math.min(cap, first * 2 ^ (n - free))
    redis.call('HSET', key, 'until', tostring(now + lock))
  end
  redis.call('PEXPIRE', key, math.floor(1000 * math.max(forget, lock)))
  if lock > wait then wait = lock end
end
return tostring(wait)
"""


class LoginLimiter:
    """Failed-login counters in Redis, per source address and per user name."""

    def __init__(
        self,
        redis: Any | Callable[[], Any],
        *,
        free: int = FREE_FAILURES,
        first: float = FIRST_LOCKOUT,
        cap: float = MAX_LOCKOUT,
        forget: float = FORGET_AFTER,
        prefix: str = PREFIX,
    ) -> None:
        self._redis = redis  # an asyncio Redis client, or a callable returning one (the gateway's, once started)
        self.free, self.first, self.cap, self.forget, self.prefix = free, first, cap, forget, prefix

    @property
    def redis(self) -> Any:
        return self._redis() if callable(self._redis) and not hasattr(self._redis, "eval") else self._redis

    def keys(self, source: str, user: str) -> list[str]:
        name = hashlib.sha256((user or "").strip().lower().encode()).hexdigest()[:32]
        return [f"{self.prefix}src:{source_key(source)}", f"{self.prefix}user:{name}"]

    async def retry_after(self, source: str, user: str) -> float:
        """Seconds until this source may try this user again (0: now)."""
        keys = self.keys(source, user)
        return float(await self.redis.eval(_RETRY_AFTER, len(keys), *keys))

    async def failed(self, source: str, user: str) -> float:
        """Count a failure; returns the lockout it starts (0 while failures are still free)."""
        keys = self.keys(source, user)
        wait = float(await self.redis.eval(_FAILED, len(keys), *keys, self.free, self.first, self.cap, self.forget))
        log.warning("failed login for user %r from %s%s", (user or "")[:64], source,
                    f"; locked out for {wait:.0f} s" if wait else "")
        return wait

    async def succeeded(self, source: str, user: str) -> None:
        """A right password: that name starts from zero (the source keeps its count until it is forgotten)."""
        await self.redis.delete(self.keys(source, user)[1])

    async def attempt(self, source: str, user: str, check: Callable[[], Awaitable[bool]]) -> bool:
        """Run `check` unless locked out (then raise `Throttled` without running it); count the outcome.

        One attempt per source and per name is checked at a time: a parallel one is refused
        (retry in a second), so a burst of guesses cannot slip past the count.
        """
        keys = self.keys(source, user)
        busy = [k.replace(":src:", ":busy:src:").replace(":user:", ":busy:user:") for k in keys]
        wait = float(await self.redis.eval(_BEGIN, 4, *keys, *busy, int(BUSY_TIMEOUT * 1000)))
        if wait < 0:
            log.warning("parallel login attempt for user %r from %s refused", (user or "")[:64], source)
            raise Throttled(1)
        if wait > 0:
            raise Throttled(wait)
        try:
            ok = await check()
            if ok:
                await self.succeeded(source, user)
            else:
                await self.failed(source, user)
            return ok
        finally:
            await self.redis.delete(*busy)  # cancelled meanwhile: the slots still expire after BUSY_TIMEOUT

    async def login(self, cfg: Config, source: str, user: str, password: str) -> str | None:
        """The role of a valid login, or None; `Throttled` when this source or name is locked out.

        The password check runs in a thread: it must never stall the event loop.
        """
        user = (user or "").strip()
        role: str | None = None

        async def check() -> bool:
            nonlocal role
            if user and password:
                role = await asyncio.to_thread(login_role, cfg, user, password)
            return role is not None

        await self.attempt(source, user, check)
        return role
