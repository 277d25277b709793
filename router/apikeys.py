"""API keys for scripts when `[gateway] require_login` is on.

A key is 32 random bytes (base64url) behind a `tg_` prefix. tiers.toml and
`$TIERGATE_API_KEYS` hold only its hash, in the admin passwords' format
(`pbkdf2_sha256$ITERATIONS$SALT_HEX$HASH_HEX`), so one format check serves both.

Keys are hashed with a single PBKDF2 iteration. Stretching exists to make guessing a
human password expensive; a key has 256 random bits, which no iteration count makes any
harder to guess, and every request must verify it: one iteration costs microseconds, the
passwords' 240,000 would cost a tenth of a second per request. The config refuses key
hashes with more than `config.MAX_KEY_ITERATIONS`, so that cost stays bounded whatever is pasted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable

from .config import API_KEY_PREFIX, hash_problem

KEY_ITERATIONS = 1


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str, *, salt: bytes | None = None, iterations: int = KEY_ITERATIONS) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", key.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def verify_hash(secret: str, encoded: str) -> bool:
    """Whether `secret` matches one stored hash; False (never an exception) for a malformed one."""
    if hash_problem(encoded):
        return False
    _, iterations, salt, digest = encoded.split("$")
    candidate = hashlib.pbkdf2_hmac("sha256", secret.encode(), bytes.fromhex(salt), int(iterations))
    return hmac.compare_digest(candidate.hex(), digest)


def verify_api_key(key: str, hashes: Iterable[str]) -> bool:
    """Whether a Bearer token is one of the configured keys (`cfg.api_key_hashes()`)."""
    if not key.startswith(API_KEY_PREFIX):
        return False  # not ours: no hashing work for arbitrary tokens
    return any(verify_hash(key, h) for h in hashes)
