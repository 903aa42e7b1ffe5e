"""Client authentication: issued bearer tokens → stored SHA-256 hashes → constant-time checks.

A token reads ``fedc1.<client id>.<secret>``; the secret is 32 random bytes (base64url), so a
plain SHA-256 is enough to store it (no password stretching needed: it cannot be guessed, only
stolen, and the database holds only its hash). The client id in the token selects the row; the
secret's hash is compared with ``hmac.compare_digest``, and an unknown id is compared against a
dummy hash so both failures take the same time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "fedc1"
_DUMMY = hashlib.sha256(b"fedc: no such client").digest()


@dataclass(frozen=True)
class IssuedToken:
    client_id: str
    token: str
    secret_hash: bytes


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def issue(existing: set[str]) -> IssuedToken:
    """A new client id (not in `existing`) and its token; only the hash is to be stored."""
    while True:
        client_id = "c" + secrets.token_hex(4)
        if client_id not in existing:
            break
    secret = secrets.token_urlsafe(32)
    return IssuedToken(client_id, f"{PREFIX}.{client_id}.{secret}", hash_secret(secret))


def parse_bearer(header: str | None) -> tuple[str, str] | None:
    """(client id, secret) from an ``Authorization: Bearer fedc1.<id>.<secret>`` header."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    parts = token.strip().split(".")
    if scheme.lower() != "bearer" or len(parts) != 3 or parts[0] != PREFIX:
        return None
    if not parts[1] or not parts[2] or len(token) > 200:
        return None
    return parts[1], parts[2]


def verify(secret: str, stored_hash: bytes | None) -> bool:
    """Constant-time comparison of the secret's hash with the stored one (None: unknown id)."""
    ok = hmac.compare_digest(hash_secret(secret), stored_hash or _DUMMY)
    return ok and stored_hash is not None
