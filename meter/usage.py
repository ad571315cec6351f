"""Per-minute usage windows in event time (SPEC §6): pure state, no Kafka.

A window is (customer, service, network, minute). Its totals are absolute; each change
increments its revision. The watermark is the highest event time seen: a window is emitted
when it changed and the watermark moved at least ``emit_every_ms`` since its last emission,
and finally once the watermark passes its end (plus ``close_after_ms``). Late events count in
their own window while it is retained (``retention_ms`` behind the watermark, default 48 h);
older ones, and events more than ``future_ms`` ahead of the later of the watermark and the
wall clock, are refused with a reason (the caller sends them to the dead letters).
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from enum import StrEnum

from meterstream.meter.clock import HOUR_MS, MINUTE_MS, SECOND_MS, floor_to
from meterstream.schemas.enums import Network, ServiceType, TrafficType
from meterstream.schemas.usage import COUNTS, UsageWindow


class Refused(StrEnum):
    TOO_LATE = "too_late"
    FROM_THE_FUTURE = "from_the_future"


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


WindowKey = tuple[int, ServiceType, Network, int]  # customer, service, network, minute start


@dataclass(slots=True)
class Window:
    totals: Totals = field(default_factory=Totals)
    revision: int = 0
    emitted_revision: int = 0
    emitted_at_watermark: int | None = None
    final_revision: int = 0  # the revision last emitted as final


@dataclass
class UsageWindows:
    retention_ms: int = 48 * HOUR_MS
    future_ms: int = 5 * MINUTE_MS
    emit_every_ms: int = SECOND_MS
    close_after_ms: int = 0
    watermark: int | None = None
    windows: dict[WindowKey, Window] = field(default_factory=dict)

    def add(self, customer_id: int, service: ServiceType, network: Network, ts_ms: int,
            traffic_type: int, status: int, bytes_sent: int, ta_ms: int,
            now_ms: int | None = None) -> Refused | None:
        known = [t for t in (self.watermark, now_ms) if t is not None]
        if known and ts_ms > max(known) + self.future_ms:
            return Refused.FROM_THE_FUTURE
        if self.watermark is not None and ts_ms < self.watermark - self.retention_ms:
            return Refused.TOO_LATE
        key = (customer_id, service, network, floor_to(ts_ms, MINUTE_MS))
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = Window()
        count_request(window.totals, traffic_type, status, bytes_sent, ta_ms)
        window.revision += 1
        if self.watermark is None or ts_ms > self.watermark:
            self.watermark = ts_ms
        return None

    def due(self) -> list[UsageWindow]:
        """Windows to emit now (changed and due, or closing), oldest first; forgets windows
        past retention."""
        if self.watermark is None:
            return []
        out = []
        for key in sorted(self.windows, key=lambda k: (k[3], k[0], k[1], k[2])):
            window = self.windows[key]
            closed = self.watermark >= key[3] + MINUTE_MS + self.close_after_ms
            if key[3] + MINUTE_MS < self.watermark - self.retention_ms:
                del self.windows[key]
                continue
            changed = window.revision > window.emitted_revision
            if not changed and not (closed and window.final_revision < window.revision):
                continue
            throttled = (window.emitted_at_watermark is not None
                         and self.watermark - window.emitted_at_watermark < self.emit_every_ms)
            if throttled and not closed:
                continue
            out.append(self._message(key, window, final=closed))
            window.emitted_revision = window.revision
            window.emitted_at_watermark = self.watermark
            if closed:
                window.final_revision = window.revision
        return out

    @staticmethod
    def _message(key: WindowKey, window: Window, final: bool) -> UsageWindow:
        customer, service, network, start = key
        return UsageWindow(customer_id=customer, service_type=service, network=network,
                           window_start=start, revision=window.revision, final=final,
                           **{name: getattr(window.totals, name) for name in COUNTS})
