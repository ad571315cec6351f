"""Money, the tier catalogue and API-key fingerprints: pure logic, no services."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterstream.crypto import DecryptError, Sealer
from meterstream.schemas import money
from meterstream.schemas.apikeys import (
    fingerprint_from_hex,
    fingerprint_of_hash,
    fingerprint_to_hex,
    key_hash,
    new_key,
)
from meterstream.schemas.enums import ServiceType, Tier
from meterstream.schemas.tiers import effective_limits


@pytest.mark.parametrize(
    ("text", "cents"),
    [("100", 10_000), ("$100.00", 10_000), ("2,000", 200_000), ("99.99", 9_999), ("0.01", 1)],
)
def test_parse_dollars(text: str, cents: int) -> None:
    assert money.parse_dollars(text) == cents


@pytest.mark.parametrize("text", ["1.001", "abc", "", "NaN", "Infinity"])
def test_parse_dollars_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        money.parse_dollars(text)


@pytest.mark.parametrize(
    ("text", "ok"),
    [("$100", True), ("$99.99", False), ("$50,000", True), ("$50,000.01", False),
     ("$2,000", True), ("$50,001", False)],
)
def test_spend_cap_bounds(text: str, ok: bool) -> None:
    cents = money.parse_dollars(text)
    if ok:
        assert money.validate_spend_cap_cents(cents) == cents
    else:
        with pytest.raises(ValueError, match="outside \\$100.00 - \\$50,000.00"):
            money.validate_spend_cap_cents(cents)


def test_default_cap_is_two_thousand_dollars() -> None:
    assert money.format_cents(money.SPEND_CAP_DEFAULT_CENTS) == "$2,000.00"


def test_money_is_never_a_float() -> None:
    for fn in (money.cents_to_micros, money.micros_to_cents_floor, money.validate_spend_cap_cents):
        with pytest.raises(TypeError):
            fn(100.0)  # type: ignore[arg-type]
    assert money.PRICE_PER_BILLABLE_REQUEST_MICROS == 100
    assert 10_000 * money.PRICE_PER_BILLABLE_REQUEST_MICROS == money.MICROS_PER_DOLLAR
    assert money.cents_to_micros(1) == 10_000
    assert money.micros_to_cents_floor(19_999) == 1


def test_tier_catalogue() -> None:
    starter = effective_limits(Tier.STARTER)
    assert (starter.guaranteed_rps, starter.burst_rps) == (100, None)
    pro = effective_limits(Tier.PRO)
    assert (pro.guaranteed_rps, pro.burst_rps) == (1_000, 2_000)
    ent = effective_limits(Tier.ENTERPRISE, {"guaranteed_rps": 5_000, "burst_rps": 8_000})
    assert (ent.guaranteed_rps, ent.burst_rps, ent.base_monthly_cents) == (5_000, 8_000, None)
    assert effective_limits(Tier.PRO, {"guaranteed_rps": 1_500}).guaranteed_rps == 1_500
    with pytest.raises(ValueError, match="needs config.guaranteed_rps"):
        effective_limits(Tier.ENTERPRISE, {})
    with pytest.raises(ValueError, match="non-negative integer"):
        effective_limits(Tier.PRO, {"burst_rps": 2.5})


def test_fingerprint_is_first_four_bytes_signed() -> None:
    secret = b"s" * 32
    digest = hmac.new(secret, b"Sabc", hashlib.sha256).hexdigest()
    assert key_hash(secret, "Sabc") == digest
    assert fingerprint_of_hash(digest) == int.from_bytes(bytes.fromhex(digest[:8]), "big", signed=True)
    assert fingerprint_of_hash("ffffffff" + "0" * 56) == -1
    assert fingerprint_of_hash("80000000" + "0" * 56) == -(2**31)
    assert fingerprint_from_hex("FFFFFFFE") == -2  # HAProxy logs upper-case hex
    with pytest.raises(ValueError):
        fingerprint_from_hex("abc")


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_fingerprint_hex_round_trip(fp: int) -> None:
    assert fingerprint_from_hex(fingerprint_to_hex(fp)) == fp


def test_new_key_names_its_service() -> None:
    key, digest, fp = new_key(b"k" * 32, ServiceType.GRAPHQL)
    assert key[0] == "G" and len(key) == 33
    assert fp != 0 and fp == fingerprint_of_hash(digest)


def test_sealer_round_trip_and_wrong_key() -> None:
    a = Sealer(base64.b64encode(b"a" * 32).decode())
    b = Sealer(base64.b64encode(b"b" * 32).decode())
    sealed = a.seal_text("SacmeSealDemoKey00000000000000001")
    assert len(sealed) <= 100  # fits api_keys.api_key_id VARCHAR(100)
    assert a.open_text(sealed) == "SacmeSealDemoKey00000000000000001"
    with pytest.raises(DecryptError, match="wrong key"):
        b.open_text(sealed)
    with pytest.raises(ValueError, match="32-byte key"):
        Sealer(base64.b64encode(b"short").decode())
