"""Tenant API key format.

A key looks like ``ssd_<key id: 16 hex>_<secret: 64 hex>``. Only SHA-256 of
the secret is stored (the secret carries 256 bits of entropy, so a slow hash
would buy nothing); keys are looked up by id and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_TOKEN = re.compile(r"^ssd_([0-9a-f]{16})_([0-9a-f]{64})$")


@dataclass(frozen=True, slots=True)
class NewApiKey:
    key_id: str
    token: str
    secret_hash: bytes


def new_api_key() -> NewApiKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_hex(32)
    return NewApiKey(key_id=key_id, token=f"ssd_{key_id}_{secret}", secret_hash=hash_secret(secret))


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _TOKEN.match(token)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
