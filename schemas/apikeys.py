"""API keys (docs/schema.md): the HMAC that HAProxy and the key store both compute.

api_key_hash = hex HMAC-SHA256(key_secret, full key); api_key_fp = its first 4 bytes as a
signed big-endian int32. HAProxy logs the fingerprint as 8 hex characters (upper case), so
the key itself never reaches a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from meterstream.schemas.enums import ServiceType

KEY_BODY_BYTES = 24  # 32 url-safe characters after the service letter
_HEX = frozenset("0123456789abcdefABCDEF")


def key_hash(key_secret: bytes, api_key: str) -> str:
    return hmac.new(key_secret, api_key.encode(), hashlib.sha256).hexdigest()


def fingerprint_of_hash(api_key_hash: str) -> int:
    return int.from_bytes(bytes.fromhex(api_key_hash[:8]), "big", signed=True)


def fingerprint_from_hex(text: str) -> int:
    """The fingerprint HAProxy logs (8 hex chars, any case) as the signed int32 we store."""
    if len(text) != 8:
        raise ValueError(f"a fingerprint is 8 hex characters, got {len(text)}")
    if not _HEX.issuperset(text):  # bytes.fromhex would skip spaces: "cb a0 c2" is 3 bytes
        raise ValueError("a fingerprint is 8 hex characters")
    return int.from_bytes(bytes.fromhex(text), "big", signed=True)


def fingerprint_to_hex(fp: int) -> str:
    return fp.to_bytes(4, "big", signed=True).hex()


def generate_key(service: ServiceType) -> str:
    """A new random API key whose first letter names its service (S, R, G)."""
    return service.key_prefix + secrets.token_urlsafe(KEY_BODY_BYTES)


def new_key(key_secret: bytes, service: ServiceType) -> tuple[str, str, int]:
    """(key, hash, fingerprint) of a fresh key whose fingerprint is not 0."""
    while True:
        key = generate_key(service)
        digest = key_hash(key_secret, key)
        fp = fingerprint_of_hash(digest)
        if fp != 0:
            return key, digest, fp
