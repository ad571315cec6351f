"""Conversions from HAProxy's printed values to LogRecord field values, where the model
cannot do them itself (the fingerprint's hex, `ts` in seconds with a fraction).

HAProxy prints an absent sample as "-" (or nothing) and logs the key fingerprint as 8 hex
characters. A value that cannot be converted raises FieldError naming the field. Every
conversion is linear in the value's length and refuses what it cannot read instead of raising
anything else.
"""

from __future__ import annotations

import math

from meterstream.schemas.apikeys import fingerprint_from_hex

ABSENT = ("", "-")
# digits of integer seconds that can still be a time the model accepts (it bounds the value):
# longer is unreadable, and never reaches int(), whose cost grows with the square of the length
_SECONDS_DIGITS = 19


class FieldError(ValueError):
    def __init__(self, field: str, value: object, where: str = "") -> None:
        self.field = field
        text = value if isinstance(value, str) else str(value)
        super().__init__(f"{field}: cannot read {text[:40]!r}" + (f" ({where})" if where else ""))


# fingerprints read, by their hex: a key's requests repeat it (bounded: emptied when full)
_FINGERPRINTS: dict[str, int] = {}
_FINGERPRINTS_MAX = 65_536


def fingerprint(value: object, where: str = "") -> int | None:
    """The fingerprint of a logged value: 8 hex characters (HAProxy's httplog captures, the
    earlier JSON line), or a JSON number, which is the int32 itself (the record's line, as
    LogRecord holds it; the model bounds it). "-", "" and null: absent."""
    if type(value) is int:
        return value
    if type(value) is str:
        known = _FINGERPRINTS.get(value)
        if known is not None:
            return known
    if value is None or value in ABSENT:
        return None
    try:
        fp = fingerprint_from_hex(str(value))
    except ValueError:
        raise FieldError("api_key_fp", value, where) from None
    if type(value) is str:
        if len(_FINGERPRINTS) >= _FINGERPRINTS_MAX:
            _FINGERPRINTS.clear()
        _FINGERPRINTS[value] = fp
    return fp


def epoch_ms(value: object) -> int:
    """HAProxy's `%Ts.%ms` (seconds with a fraction) or an integer of ms, as integer ms."""
    if type(value) is float and math.isfinite(value * 1000):  # the JSON line's, first
        return round(value * 1000)
    if isinstance(value, bool):
        raise FieldError("ts", value)
    if isinstance(value, int):
        return value if value >= 100_000_000_000 else value * 1000
    if isinstance(value, float) and math.isfinite(value * 1000):
        return round(value * 1000)  # exact: a double holds 13 significant digits with room
    if isinstance(value, str):
        seconds, _, fraction = value.partition(".")
        if (seconds.isascii() and seconds.isdigit() and len(seconds) <= _SECONDS_DIGITS
                and (not fraction or (fraction.isascii() and fraction.isdigit()))):
            return int(seconds) * 1000 + int((fraction + "000")[:3])
    raise FieldError("ts", value)
