"""AES-256-GCM sealing (the `cryptography` library) of secrets at rest: API keys in
``api_keys.api_key_id`` and, later, vault versions."""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class DecryptError(ValueError):
    pass


class Sealer:
    def __init__(self, key_b64: str) -> None:
        try:
            key = base64.b64decode(key_b64, validate=True)
        except binascii.Error:
            raise ValueError("the encryption key is not valid base64") from None
        if len(key) != 32:
            raise ValueError(f"AES-256 needs a 32-byte key, this one has {len(key)} bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes = b"") -> bytes:
        if len(sealed) < NONCE_BYTES + 16:
            raise DecryptError("ciphertext too short")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context)
        except InvalidTag:
            raise DecryptError("cannot decrypt: wrong key or tampered data") from None

    def seal_text(self, text: str, context: bytes = b"") -> str:
        return base64.b64encode(self.seal(text.encode(), context)).decode()

    def open_text(self, sealed_b64: str, context: bytes = b"") -> str:
        return self.open(base64.b64decode(sealed_b64), context).decode()
