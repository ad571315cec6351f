"""Money (docs/metering.md): integer micro-dollars in the pipeline, integer cents in Postgres.

Nothing here accepts a float: amounts typed by people go through Decimal.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from meterstream.schemas.types import INT64_MAX

MICROS_PER_CENT = 10_000
MICROS_PER_DOLLAR = 1_000_000
# $1.00 per 10,000 billable requests, every tier
PRICE_PER_BILLABLE_REQUEST_MICROS = MICROS_PER_DOLLAR // 10_000  # 100 µ$

# Spend cap (docs/schema.md): default $2,000; allowed $100 - $50,000, settable in cents
SPEND_CAP_DEFAULT_CENTS = 200_000
SPEND_CAP_MIN_CENTS = 10_000
SPEND_CAP_MAX_CENTS = 5_000_000
# the largest amount of a money column (balance, committed charges) whose micro-dollars still
# fit the pipeline's int64 (schemas.types.Micros); the CHECKs of migration 0006 say the same
CENTS_MAX = INT64_MAX // MICROS_PER_CENT


def cents_to_micros(cents: int) -> int:
    _require_int(cents)
    return cents * MICROS_PER_CENT


def micros_to_cents_floor(micros: int) -> int:
    """Cents fully accrued (a partial cent is not yet owed)."""
    _require_int(micros)
    return micros // MICROS_PER_CENT


def parse_dollars(text: str) -> int:
    """'2000', '2,000.00' or '$99.99' -> cents; more than two decimals is an error."""
    cleaned = text.strip().removeprefix("$").replace(",", "")
    try:
        amount = Decimal(cleaned)
    except InvalidOperation:
        raise ValueError(f"not an amount of dollars: {text!r}") from None
    cents = amount * 100
    if not amount.is_finite() or cents != cents.to_integral_value():
        raise ValueError(f"not a whole number of cents: {text!r}")
    return int(cents)


def validate_spend_cap_cents(cents: int) -> int:
    _require_int(cents)
    if not SPEND_CAP_MIN_CENTS <= cents <= SPEND_CAP_MAX_CENTS:
        raise ValueError(
            f"spend cap {format_cents(cents)} is outside "
            f"{format_cents(SPEND_CAP_MIN_CENTS)} - {format_cents(SPEND_CAP_MAX_CENTS)}"
        )
    return cents


def format_cents(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}${whole:,}.{part:02d}"


def _require_int(value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"money must be an integer, got {type(value).__name__}")
