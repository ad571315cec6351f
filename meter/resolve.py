"""Resolution of a record's API-key fingerprint to its customer (docs/metering.md), and the
rate-limited ``invalid_key`` events for fingerprints that keep hitting. Pure logic."""

from __future__ import annotations

from dataclasses import dataclass

from meterstream.meter.clock import HOUR_MS, floor_to
from meterstream.schemas.enums import EVENT_TYPE_CODES, EventClass, LimitKind, UnauthReason
from meterstream.schemas.limits import LimitEvent, event_id

UNAUTHENTICATED = 0
_AUTH_REFUSED = EVENT_TYPE_CODES[EventClass.AUTH_FAILURE]


def resolve(keys: dict[int, int], api_key_fp: int | None, service_type: int | None,
            event_type: int = 0) -> tuple[int, UnauthReason | None]:
    """(customer_id, None) for an active key of the record's service, else (0, the reason).
    ``keys`` maps the fingerprints of active keys to ``slot(customer, service)``
    (meter.config_view); a revoked key is a tombstone on meter.apikeys, so it is not there:
    an unknown key. HAProxy's verdict stands (docs/metering.md): a request it refused for its
    authentication is unauthenticated whatever its fingerprint, since fingerprints collide."""
    if api_key_fp is None:
        return UNAUTHENTICATED, UnauthReason.NO_KEY
    if event_type in _AUTH_REFUSED:
        return UNAUTHENTICATED, UnauthReason.REFUSED
    found = keys.get(api_key_fp)
    if found is None:
        return UNAUTHENTICATED, UnauthReason.UNKNOWN_KEY
    if service_type is not None and found & 3 != service_type:
        return UNAUTHENTICATED, UnauthReason.WRONG_SERVICE
    return found >> 2, None


@dataclass(slots=True)
class InvalidKeyTracker:
    """Hits of one fingerprint that resolves to no customer, per event-time hour.

    ``invalid_key`` fires once per fingerprint and hour, when the hits of that hour reach
    ``threshold``: a fingerprint that keeps hitting is reported, a stray request is only
    counted, and a flood makes one event an hour, not one per request.
    """

    hour: int = -1
    hits: int = 0
    reported: bool = False

    def hit(self, api_key_fp: int, ts_ms: int, threshold: int) -> LimitEvent | None:
        hour = floor_to(ts_ms, HOUR_MS)
        if hour > self.hour:
            self.hour, self.hits, self.reported = hour, 0, False
        elif hour < self.hour:
            return None  # a late hit of an hour already left behind: counted in usage only
        self.hits += 1
        if self.reported or self.hits < threshold:
            return None
        self.reported = True
        window = f"fp{api_key_fp}:{hour}"
        return LimitEvent(event_id=event_id(UNAUTHENTICATED, LimitKind.INVALID_KEY, window),
                          customer_id=UNAUTHENTICATED, kind=LimitKind.INVALID_KEY, observed=self.hits,
                          limit=threshold, window=window, at=ts_ms, api_key_fp=api_key_fp)
