"""Admin passwords: PBKDF2-SHA256 hashes in tiers.toml, never the passwords themselves."""

from __future__ import annotations

import hashlib
import hmac
import os

from .config import Config

ITERATIONS = 240_000


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    return hmac.compare_digest(candidate.hex(), digest)


def check_login(cfg: Config, user: str, password: str) -> bool:
    """A configured admin user, or the user `admin` with $TIERGATE_ADMIN_TOKEN as password."""
    token = os.environ.get("TIERGATE_ADMIN_TOKEN", "")
    if token and user == "admin" and hmac.compare_digest(password.encode(), token.encode()):
        return True
    return any(u.name == user and verify_password(password, u.password_hash) for u in cfg.admin.users)
