"""Tenant API keys: random bearer secrets stored only as hashes."""

from __future__ import annotations

import hashlib
import secrets

_PREFIX = "fe_"


def new_api_key() -> str:
    """A new key (256 random bits); shown once, never stored."""
    return _PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The stored form of a key. SHA-256 suffices: keys are random, not passwords."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def looks_like_api_key(key: str) -> bool:
    return key.startswith(_PREFIX) and 16 <= len(key) <= 128
