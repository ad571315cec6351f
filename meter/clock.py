"""Event-time calendar arithmetic (UTC), in integer epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime

SECOND_MS = 1_000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def floor_to(ts_ms: int, unit_ms: int) -> int:
    return ts_ms - ts_ms % unit_ms


def day_number(ts_ms: int) -> int:
    """Days since 1970-01-01 (UTC) of the instant."""
    return ts_ms // DAY_MS


def month_of(ts_ms: int) -> tuple[int, int]:
    moment = datetime.fromtimestamp(ts_ms / 1000, UTC)  # only year and month are used
    return moment.year, moment.month


def month_start_ms(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1000


def month_label(ts_ms: int) -> str:
    year, month = month_of(ts_ms)
    return f"{year:04d}-{month:02d}"
