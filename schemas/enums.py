"""Enumerations shared by the log line, the wire models and the Postgres schema.

Integer codes travel as integers (as HAProxy logs them and Postgres stores them, SMALLINT);
named states travel as their lower-case names (Postgres TEXT with a CHECK of the same names).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ServiceType(IntEnum):
    SEAL = 1
    GRPC = 2
    GRAPHQL = 3

    @property
    def key_prefix(self) -> str:
        """The first letter of an API key of this service."""
        return _KEY_PREFIX[self]

    @classmethod
    def from_key_prefix(cls, letter: str) -> ServiceType:
        for service, prefix in _KEY_PREFIX.items():
            if prefix == letter:
                return service
        raise ValueError(f"unknown API-key prefix {letter!r}")


_KEY_PREFIX = {ServiceType.SEAL: "S", ServiceType.GRPC: "R", ServiceType.GRAPHQL: "G"}


class Network(IntEnum):
    TESTNET = 0
    MAINNET = 1
    DEVNET = 2
    LOCALNET = 3


class FeType(IntEnum):
    PRIVATE = 1
    METERED = 2
    LOCAL = 3


class TrafficType(IntEnum):
    NA = 0
    GUARANTEED = 1
    BURST = 2
    DENIED = 3
    DROPPED = 4
    IP_DROPPED = 5
    UNAVAILABLE = 6

    @property
    def is_denied(self) -> bool:
        """Traffic types 3-6 count as denied (docs/metering.md)."""
        return self >= TrafficType.DENIED

    @property
    def is_chargeable(self) -> bool:
        return self in (TrafficType.GUARANTEED, TrafficType.BURST)


class EventClass(StrEnum):
    """The classes of ``event_type`` codes: each code belongs to exactly one."""

    SUCCESS = "success"
    AUTH_FAILURE = "auth_failure"
    IP_BLOCK = "ip_block"
    AUTHORIZATION = "authorization"
    BACKEND_ERROR = "backend_error"

    @classmethod
    def of(cls, code: int) -> EventClass:
        for klass, codes in EVENT_TYPE_CODES.items():
            if code in codes:
                return klass
        raise ValueError(f"unknown event_type {code}")


EVENT_TYPE_CODES: dict[EventClass, range] = {
    EventClass.SUCCESS: range(0, 1),
    EventClass.AUTH_FAILURE: range(10, 17),
    EventClass.IP_BLOCK: range(20, 22),
    EventClass.AUTHORIZATION: range(30, 31),
    EventClass.BACKEND_ERROR: range(50, 64),
}
VALID_EVENT_TYPES: frozenset[int] = frozenset(c for r in EVENT_TYPE_CODES.values() for c in r)


class CustomerStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


class SpendWindow(StrEnum):
    ROLLING_30D = "rolling_30d"
    CALENDAR_MONTH = "calendar_month"


class Tier(StrEnum):
    STARTER = "starter"
    PRO = "pro"
    ENTERPRISE = "enterprise"


class ApiKeyStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


class UnauthReason(StrEnum):
    """Why a record was counted under customer 0 / unauthenticated (docs/metering.md)."""

    NO_KEY = "no_key"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    WRONG_SERVICE = "wrong_service"
    REFUSED = "refused"  # HAProxy refused the request for its authentication (event_type 10-16)


class LimitKind(StrEnum):
    RATE_EXCEEDED = "rate_exceeded"
    RATE_CLEARED = "rate_cleared"
    SPEND_WARNING = "spend_warning"
    SPEND_CAP_REACHED = "spend_cap_reached"
    SPEND_CLEARED = "spend_cleared"
    BALANCE_EXHAUSTED = "balance_exhausted"
    BALANCE_RESTORED = "balance_restored"
    INVALID_KEY = "invalid_key"


class VaultStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    THROTTLED = "throttled"
