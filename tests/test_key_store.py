"""Sealing at rest (meterstream/crypto.py, meterstream/key_store.py): the Sealer's errors are
its own whatever it is given, and a sealed API key is bound to its row and names its key."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterstream.crypto import BadKey, DecryptError, Sealer, SealError
from meterstream.key_store import COLUMN_CHARS, KeyStore, KeyStoreError, key_id, parse
from meterstream.schemas.apikeys import key_hash

KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 32).decode()
SECRET = b"s" * 32
API_KEY = "SacmeSealDemoKey00000000000000001"
HASH = key_hash(SECRET, API_KEY)
OTHER_HASH = key_hash(SECRET, "SinitechSealDemoKey00000000000001")


# -- Sealer: every malformed input raises SealError ---------------------------------------------

@settings(max_examples=300)
@given(st.one_of(st.text(), st.binary().map(lambda b: base64.b64encode(b).decode()), st.binary(),
                 st.none(), st.integers()))
def test_a_bad_key_is_a_seal_error(key: object) -> None:
    try:
        Sealer(key)  # type: ignore[arg-type]
    except SealError as exc:
        assert isinstance(exc, BadKey)
        if isinstance(key, str) and len(key) > 8:
            assert key not in str(exc)  # the key is never in the message


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), st.none(), st.integers(),
                 st.binary(min_size=28, max_size=200).map(lambda b: base64.b64encode(b).decode())),
       st.binary(max_size=40))
def test_any_ciphertext_opens_or_raises_decrypt_error(sealed: object, context: bytes) -> None:
    sealer = Sealer(KEY_A)
    for call in (sealer.open, sealer.open_text):
        try:
            call(sealed, context)  # type: ignore[arg-type]
        except DecryptError:
            pass


@given(st.binary(max_size=300), st.binary(max_size=40), st.integers(0, 10_000), st.integers(0, 255))
def test_a_flipped_byte_or_a_wrong_context_never_opens(plaintext: bytes, context: bytes, where: int,
                                                      flip: int) -> None:
    sealer = Sealer(KEY_A)
    sealed = bytearray(sealer.seal(plaintext, context))
    assert sealer.open(bytes(sealed), context) == plaintext
    with pytest.raises(DecryptError):
        sealer.open(bytes(sealed), context + b"x")
    with pytest.raises(DecryptError):
        Sealer(KEY_B).open(bytes(sealed), context)
    if flip:
        sealed[where % len(sealed)] ^= flip
        with pytest.raises(DecryptError):
            sealer.open(bytes(sealed), context)


def test_text_that_is_not_utf8_or_not_unicode_is_a_seal_error() -> None:
    sealer = Sealer(KEY_A)
    sealed = base64.b64encode(sealer.seal(b"\xff\xfe")).decode()
    with pytest.raises(DecryptError, match="not UTF-8"):
        sealer.open_text(sealed)
    with pytest.raises(SealError):
        sealer.seal_text("\ud800")


# -- KeyStore: bound to the row, named by its key id --------------------------------------------

def test_a_sealed_key_opens_only_in_its_own_row() -> None:
    store = KeyStore(KEY_A)
    sealed = store.seal(API_KEY, HASH)
    assert sealed.startswith(f"{key_id(KEY_A)}:") and len(sealed) <= COLUMN_CHARS
    assert API_KEY not in sealed
    assert store.open(sealed, HASH) == API_KEY
    with pytest.raises(KeyStoreError, match="another row"):
        store.open(sealed, OTHER_HASH)  # swapped into another row
    forged = f"{key_id(KEY_B)}:{parse(sealed).body}"
    with pytest.raises(KeyStoreError, match="not configured"):
        store.open(forged, HASH)
    with pytest.raises(KeyStoreError):
        KeyStore(KEY_A, [KEY_B]).open(forged, HASH)  # the key id is bound too


def test_previous_keys_open_and_the_current_one_seals() -> None:
    old = KeyStore(KEY_A)
    sealed = old.seal(API_KEY, HASH)
    rotated = KeyStore(KEY_B, [KEY_A])
    assert rotated.current_id == key_id(KEY_B) != old.current_id
    assert rotated.open(sealed, HASH) == API_KEY
    assert not rotated.is_current(sealed)
    resealed = rotated.seal(API_KEY, HASH)
    assert rotated.is_current(resealed) and rotated.open(resealed, HASH) == API_KEY
    with pytest.raises(KeyStoreError):
        KeyStore(KEY_B).open(sealed, HASH)  # the old key dropped: it no longer opens


def test_the_format_without_a_key_id_is_still_read() -> None:
    legacy = Sealer(KEY_A).seal_text(API_KEY)  # as rows were sealed before key ids
    assert ":" not in legacy
    assert KeyStore(KEY_B, [KEY_A]).open(legacy, HASH) == API_KEY
    assert not KeyStore(KEY_A).is_current(legacy)
    with pytest.raises(KeyStoreError, match="no configured"):
        KeyStore(KEY_B).open(legacy, HASH)


def test_a_key_too_long_for_the_column_is_refused() -> None:
    store = KeyStore(KEY_A)
    assert len(store.seal("S" + "x" * 37, HASH)) <= COLUMN_CHARS
    with pytest.raises(KeyStoreError, match="too long"):
        store.seal("S" + "x" * 60, HASH)


@settings(max_examples=300)
@given(st.text(max_size=120), st.text(max_size=70))
def test_any_sealed_text_or_hash_opens_or_raises_key_store_error(sealed: str, digest: str) -> None:
    store = KeyStore(KEY_A, [KEY_B])
    for candidate in (sealed, f"{store.current_id}:{sealed}"):
        for h in (digest, HASH):
            try:
                store.open(candidate, h)
            except KeyStoreError:
                pass


def test_key_ids_differ_and_reveal_nothing() -> None:
    ids = {key_id(base64.b64encode(os.urandom(32)).decode()) for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 8 for i in ids)
    with pytest.raises(BadKey):
        key_id("not base64!")


# -- the vault key rotates too: older versions still decrypt -------------------------------------

def test_a_vault_version_written_under_a_previous_key_still_decrypts(tmp_path) -> None:  # noqa: ANN001
    from meterstream.sinks.vault_store import VaultStore

    old = VaultStore(tmp_path, KEY_A)
    path = old.path_of(7)
    path.write_bytes(old.sealer.seal(b'{"customer:1":{}}', b"meterstream-vault:7"))
    assert VaultStore(tmp_path, KEY_B, [KEY_A]).decrypt(path) == b'{"customer:1":{}}'
    with pytest.raises(DecryptError, match="wrong vault key"):
        VaultStore(tmp_path, KEY_B).decrypt(path)
