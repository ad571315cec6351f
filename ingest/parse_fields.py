"""Conversions from HAProxy's printed values to LogRecord field values.

HAProxy prints an absent sample as "-" (or nothing), prefixes some counters with "+" under
`option logasap`, and logs the key fingerprint as 8 hex characters. A value that cannot be
converted raises FieldError naming the field.
"""

from __future__ import annotations

from meterstream.schemas.apikeys import fingerprint_from_hex

ABSENT = ("", "-")


class FieldError(ValueError):
    def __init__(self, field: str, value: object) -> None:
        self.field = field
        super().__init__(f"{field}: cannot read {str(value)[:40]!r}")


def opt_int(field: str, value: object) -> int | None:
    if value is None or value in ABSENT:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.lstrip("+"))
        except ValueError:
            pass
    raise FieldError(field, value)


def int_or(field: str, value: object, default: int) -> int:
    converted = opt_int(field, value)
    return default if converted is None else converted


def opt_str(value: object) -> str | None:
    if value is None or value in ABSENT:
        return None
    return str(value)


def fingerprint(value: object) -> int | None:
    if value is None or value in ABSENT:
        return None
    try:
        return fingerprint_from_hex(str(value))
    except ValueError:
        raise FieldError("api_key_fp", value) from None


def epoch_ms(value: object) -> int:
    """HAProxy's `%Ts.%ms` (seconds with a fraction) or an integer of ms, as integer ms."""
    if isinstance(value, bool):
        raise FieldError("ts", value)
    if isinstance(value, int):
        return value if value >= 100_000_000_000 else value * 1000
    if isinstance(value, float):
        return round(value * 1000)  # exact: a double holds 13 significant digits with room
    if isinstance(value, str):
        seconds, _, fraction = value.partition(".")
        if seconds.isdigit() and (not fraction or fraction.isdigit()):
            return int(seconds) * 1000 + int((fraction + "000")[:3])
    raise FieldError("ts", value)
