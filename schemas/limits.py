"""Limit events on ``meter.breaches`` (docs/sinks.md)."""

from __future__ import annotations

from pydantic import Field

from meterstream.schemas.enums import LimitKind, ServiceType
from meterstream.schemas.types import INT64_MAX, CustomerRef, EpochMs, Fingerprint, Text
from meterstream.schemas.wire import WireModel


class LimitEvent(WireModel):
    """A crossing of a limit. ``observed`` and ``limit`` are in the kind's unit: requests per
    second for rate kinds, micro-dollars for spend and balance kinds, hits for invalid_key."""

    event_id: Text = Field(min_length=1, max_length=200)
    customer_id: CustomerRef
    service_type: ServiceType | None = None
    kind: LimitKind
    observed: int = Field(ge=-INT64_MAX, le=INT64_MAX)
    limit: int = Field(ge=-INT64_MAX, le=INT64_MAX)
    window: Text = Field(min_length=1, max_length=100, description="the window or crossing")
    at: EpochMs = Field(description="event time of the crossing, epoch milliseconds")
    api_key_fp: Fingerprint | None = None
    region_id: int | None = Field(default=None, ge=0, le=2047)


def event_id(
    customer_id: int, kind: LimitKind, window: str, service_type: ServiceType | None = None
) -> str:
    """Deterministic id of a crossing, so that a replay produces no new ids."""
    service = "-" if service_type is None else str(int(service_type))
    return f"{customer_id}:{service}:{kind.value}:{window}"
