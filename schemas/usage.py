"""Per-minute usage windows on ``meter.usage`` (docs/metering.md), with absolute totals."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import Field, field_validator, model_validator

from meterstream.schemas.enums import Network, ServiceType
from meterstream.schemas.types import INT64_MAX, Count, CustomerRef, EpochMs
from meterstream.schemas.wire import WireModel, dumps_exact

WINDOW_MS = 60_000
# the counters of a window, in this order wherever they are listed (usage_minutes, the meter)
COUNTS = ("requests", "billable", "bytes_sent", "denied", "client_errors", "server_errors", "ta_sum_ms")


class UsageWindow(WireModel):
    """Totals of one (customer, service, network, minute). Each message supersedes the one
    before it for the same window; ``revision`` grows with every change so a consumer can
    ignore a stale or replayed message."""

    customer_id: CustomerRef
    service_type: ServiceType
    network: Network
    window_start: EpochMs = Field(description="epoch ms, a multiple of 60,000")
    revision: int = Field(ge=1, le=INT64_MAX)
    final: bool = False
    requests: Count = 0
    billable: Count = 0
    bytes_sent: Count = 0
    denied: Count = 0
    client_errors: Count = 0
    server_errors: Count = 0
    ta_sum_ms: Count = 0

    @field_validator("window_start")
    @classmethod
    def _on_minute(cls, value: int) -> int:
        if value % WINDOW_MS:
            raise ValueError("window_start must be on a minute boundary")
        return value

    @model_validator(mode="after")
    def _parts_within_total(self) -> UsageWindow:
        for name in ("billable", "denied", "client_errors", "server_errors"):
            if getattr(self, name) > self.requests:
                raise ValueError(f"{name} cannot exceed requests")
        return self


class WindowRow(NamedTuple):
    """A usage window as the meter emits it, before it becomes a ``meter.usage`` value: the
    fields of UsageWindow, in its order, with the counts in COUNTS order (a batch can emit
    hundreds of thousands: a validated model each would cost a kilobyte and a few
    microseconds). ``value()`` writes exactly what ``encode(self.model())`` writes (a test
    holds them equal)."""

    customer_id: int
    service_type: int
    network: int
    window_start: int
    revision: int
    final: bool
    counts: tuple[int, ...]

    def value(self) -> bytes:
        return dumps_exact({"v": UsageWindow.SCHEMA_VERSION, "customer_id": self.customer_id,
                            "service_type": self.service_type, "network": self.network,
                            "window_start": self.window_start, "revision": self.revision, "final": self.final,
                            **dict(zip(COUNTS, self.counts, strict=True))})

    def model(self) -> UsageWindow:
        return UsageWindow(customer_id=self.customer_id, service_type=ServiceType(self.service_type),
                           network=Network(self.network),
                           window_start=self.window_start, revision=self.revision, final=self.final,
                           **dict(zip(COUNTS, self.counts, strict=True)))
