"""The totals of a usage window (docs/metering.md) and how one request adds to them. The windows
themselves (event time, emission, lateness, retention) are meter/meter_stage.py's."""

from __future__ import annotations

from dataclasses import dataclass

from meterstream.schemas.enums import TrafficType
from meterstream.schemas.records import is_billable
from meterstream.schemas.types import INT64_MAX


@dataclass(slots=True)
class Totals:
    """One counter per field of schemas.usage.COUNTS, in that order (a test holds them equal)."""

    requests: int = 0
    billable: int = 0
    bytes_sent: int = 0
    denied: int = 0
    client_errors: int = 0
    server_errors: int = 0
    ta_sum_ms: int = 0

    def as_list(self) -> list[int]:
        return [self.requests, self.billable, self.bytes_sent, self.denied, self.client_errors,
                self.server_errors, self.ta_sum_ms]

    def as_tuple(self) -> tuple[int, ...]:
        return (self.requests, self.billable, self.bytes_sent, self.denied, self.client_errors,
                self.server_errors, self.ta_sum_ms)


def count_request(t: Totals, traffic_type: TrafficType, status: int, bytes_sent: int, ta_ms: int) -> None:
    """Adds one request. The sums saturate at the largest BIGINT rather than overflow: a
    window that adds up 2**63 bytes is an attack, and stays at the bound."""
    t.requests += 1
    t.billable += is_billable(traffic_type, status)
    if bytes_sent:
        t.bytes_sent = min(t.bytes_sent + bytes_sent, INT64_MAX)
    t.denied += traffic_type.is_denied
    t.client_errors += 400 <= status <= 499
    t.server_errors += 500 <= status <= 599
    if ta_ms > 0:  # -1: never reached, adds nothing
        t.ta_sum_ms = min(t.ta_sum_ms + ta_ms, INT64_MAX)
