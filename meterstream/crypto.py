"""AES-256-GCM sealing (the `cryptography` library) of secrets at rest: the full API keys in
``api_keys.api_key_id`` (meterstream/key_store.py) and the vault versions
(sinks/vault_store.py).

Every malformed input raises an error of this module (``SealError``: ``BadKey`` for a key,
``DecryptError`` for a ciphertext), never a library's ValueError or UnicodeDecodeError, and no
message holds a key or a plaintext.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
TAG_BYTES = 16


class SealError(ValueError):
    """A key or a ciphertext that cannot be used."""


class BadKey(SealError):
    """The key is not base64 of 32 bytes."""


class DecryptError(SealError):
    """The ciphertext does not open: malformed, under another key or context, or altered."""


class Sealer:
    def __init__(self, key_b64: str) -> None:
        self._aead = AESGCM(decode_key(key_b64))

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes:
        if not isinstance(plaintext, bytes) or not isinstance(context, bytes):
            raise SealError("seal takes bytes")
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes = b"") -> bytes:
        if not isinstance(sealed, bytes | bytearray | memoryview) or not isinstance(context, bytes):
            raise DecryptError("not a ciphertext: bytes expected")
        sealed = bytes(sealed)
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise DecryptError("ciphertext too short")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context)
        except InvalidTag:
            raise DecryptError("cannot decrypt: wrong key or tampered data") from None

    def seal_text(self, text: str, context: bytes = b"") -> str:
        if not isinstance(text, str):
            raise SealError("seal_text takes a str")
        try:
            plaintext = text.encode()
        except UnicodeEncodeError:  # a lone surrogate
            raise SealError("the text is not valid Unicode") from None
        return base64.b64encode(self.seal(plaintext, context)).decode()

    def open_text(self, sealed_b64: str, context: bytes = b"") -> str:
        if not isinstance(sealed_b64, str):
            raise DecryptError("not a ciphertext: base64 text expected")
        try:
            sealed = base64.b64decode(sealed_b64, validate=True)
        except (binascii.Error, ValueError):  # ValueError: not ASCII
            raise DecryptError("not a ciphertext: not base64") from None
        try:
            return self.open(sealed, context).decode()
        except UnicodeDecodeError:  # authentic, so sealed by someone holding the key: not by us
            raise DecryptError("the plaintext is not UTF-8") from None


def decode_key(key_b64: str) -> bytes:
    """The 32 bytes of a base64 AES-256 key; BadKey (without the key) otherwise."""
    if not isinstance(key_b64, str):
        raise BadKey("the encryption key must be base64 text")
    try:
        key = base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("the encryption key is not valid base64") from None
    if len(key) != 32:
        raise BadKey(f"AES-256 needs a 32-byte key, this one has {len(key)} bytes")
    return key
