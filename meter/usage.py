"""The totals of a usage window (SPEC §6) and how one request adds to them. The windows
themselves (event time, emission, lateness, retention) are meter/meter_stage.py's."""

from __future__ import annotations

from dataclasses import make_dataclass

from meterstream.schemas.enums import TrafficType
from meterstream.schemas.usage import COUNTS

# one counter per field of schemas.usage.COUNTS
Totals = make_dataclass("Totals", [(name, int, 0) for name in COUNTS], slots=True)


def count_request(t: Totals, traffic_type: int, status: int, bytes_sent: int, ta_ms: int) -> None:
    traffic = TrafficType(traffic_type)
    t.requests += 1
    t.billable += traffic.is_chargeable and 200 <= status <= 399
    t.bytes_sent += bytes_sent
    t.denied += traffic.is_denied
    t.client_errors += 400 <= status <= 499
    t.server_errors += 500 <= status <= 599
    t.ta_sum_ms += max(ta_ms, 0)
