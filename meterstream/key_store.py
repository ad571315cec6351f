"""The full API keys at rest: ``api_keys.api_key_id`` sealed with AES-256-GCM under the
key-store key (docs/security.md "The key store").

A sealed key is ``<key id>:<base64 of nonce, ciphertext and tag>``:

- the **key id** is 8 hex characters derived from the key-store key (the first 4 bytes of
  SHA-256 of a label and the key: it says which key sealed the row and reveals nothing of it),
  so the key can rotate: new seals use ``keys.key_store_b64``, rows sealed under a key listed in
  ``keys.key_store_previous_b64`` still open, and ``meterstream keys rotate-store``
  (meterstream/key_rotation.py) re-seals them under the current key;
- the **associated data** is the label, the key id and the row's ``api_key_hash``, so a
  ciphertext copied into another row (or given another key id) does not open.

Rows sealed before this format (plain base64, no key id, no associated data: their text has no
``:``) are still opened, with each configured key in turn, until ``rotate-store`` has re-sealed
them; nothing else reads or writes that format.

The sealed text of a 33-character key is 93 characters; the column holds 100, so a key of at
most 38 bytes can be stored (``KeyStoreError`` beyond).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from meterstream.crypto import DecryptError, Sealer, SealError, decode_key

COLUMN_CHARS = 100  # api_keys.api_key_id VARCHAR(100)
_LABEL = b"meterstream api_keys.api_key_id"
_HASH = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{8}$")


class KeyStoreError(SealError):
    """A key that cannot be sealed, or a sealed key that cannot be opened; never holds either."""


def key_id(key_b64: str) -> str:
    """The id of a key-store key: 8 hex characters of SHA-256(label, key)."""
    return hashlib.sha256(_LABEL + b"\x00key-id\x00" + decode_key(key_b64)).hexdigest()[:8]


def _context(kid: str, api_key_hash: str) -> bytes:
    return b"%s\x00%s\x00%s" % (_LABEL, kid.encode(), api_key_hash.encode())


def _checked_hash(api_key_hash: str) -> str:
    if not isinstance(api_key_hash, str) or not _HASH.match(api_key_hash.strip()):
        raise KeyStoreError("api_key_hash must be 64 lower-case hex characters")
    return api_key_hash.strip()  # CHAR(64) pads nothing at this length, but a reader may


@dataclass(frozen=True, slots=True)
class Sealed:
    """What a sealed text says of itself: its key id (None: the format without one)."""

    key_id: str | None
    body: str


def parse(sealed: str) -> Sealed:
    if not isinstance(sealed, str):
        raise KeyStoreError("a sealed key is text")
    kid, colon, body = sealed.partition(":")
    if not colon:
        return Sealed(None, sealed)
    if not _KEY_ID.match(kid):
        raise KeyStoreError("a sealed key starts with an 8-hex-character key id and ':'")
    return Sealed(kid, body)


class KeyStore:
    """Seals under the current key; opens under the current key or a previous one."""

    def __init__(self, current_b64: str, previous_b64: Iterable[str] = ()) -> None:
        self.current_id = key_id(current_b64)
        self._sealers: dict[str, Sealer] = {self.current_id: Sealer(current_b64)}
        for key in previous_b64:
            self._sealers.setdefault(key_id(key), Sealer(key))

    @classmethod
    def from_settings(cls, settings) -> KeyStore:  # noqa: ANN001 - meterstream.settings.Settings
        keys = settings.keys
        if keys.key_store_b64 is None:
            raise KeyStoreError("keys.key_store_b64 is not set")
        return cls(keys.key_store_b64.get_secret_value(), [k.get_secret_value() for k in keys.key_store_previous_b64])

    @property
    def key_ids(self) -> list[str]:
        return list(self._sealers)

    def seal(self, api_key: str, api_key_hash: str) -> str:
        digest = _checked_hash(api_key_hash)
        body = self._sealers[self.current_id].seal_text(api_key, _context(self.current_id, digest))
        sealed = f"{self.current_id}:{body}"
        if len(sealed) > COLUMN_CHARS:
            raise KeyStoreError(f"the API key is too long to store: sealed, it takes {len(sealed)} characters "
                                f"and api_keys.api_key_id holds {COLUMN_CHARS}")
        return sealed

    def open(self, sealed: str, api_key_hash: str) -> str:
        """The full key of a row; KeyStoreError when it does not open under any configured key
        with this row's hash (another row's ciphertext, an unknown key id, altered text)."""
        digest = _checked_hash(api_key_hash)
        found = parse(sealed)
        try:
            if found.key_id is None:  # the format without a key id: any configured key, no context
                for sealer in self._sealers.values():
                    try:
                        return sealer.open_text(found.body)
                    except DecryptError:
                        continue
                raise KeyStoreError("the sealed key (without a key id) opens under no configured key-store key")
            keyed = self._sealers.get(found.key_id)
            if keyed is None:
                raise KeyStoreError(f"the sealed key is under key id {found.key_id}, which is not configured "
                                    "(keys.key_store_b64, keys.key_store_previous_b64)")
            return keyed.open_text(found.body, _context(found.key_id, digest))
        except DecryptError as exc:
            raise KeyStoreError(f"the sealed key does not open: {exc} (or it belongs to another row)") from None

    def is_current(self, sealed: str) -> bool:
        """Whether ``sealed`` is under the current key (rotate-store leaves it alone)."""
        try:
            return parse(sealed).key_id == self.current_id
        except KeyStoreError:
            return False
