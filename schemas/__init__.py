"""The data every stage shares: wire models of the Kafka topics, enumerations, money, the tier
catalogue, API-key fingerprints, and the Postgres migrations (``schemas/sql``).

A field of a wire model or a table is defined here once; ingest, meter and sinks import it.
"""

from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
from meterstream.schemas.enums import (
    ApiKeyStatus,
    CustomerStatus,
    EventClass,
    FeType,
    LimitKind,
    Network,
    ServiceType,
    SpendWindow,
    Tier,
    TrafficType,
    UnauthReason,
    VaultStatus,
)
from meterstream.schemas.limits import LimitEvent
from meterstream.schemas.records import LogRecord, RejectedLine, SourcePosition, is_billable
from meterstream.schemas.resolved import ResolvedBatch
from meterstream.schemas.usage import UsageWindow
from meterstream.schemas.vault import SealKeyEntry, ServiceEntry, VaultEntry
from meterstream.schemas.wire import WireError, WireModel, decode, encode

__all__ = [
    "ApiKeyState",
    "ApiKeyStatus",
    "CustomerState",
    "CustomerStatus",
    "EventClass",
    "FeType",
    "InstanceState",
    "LimitEvent",
    "LimitKind",
    "LogRecord",
    "Network",
    "RejectedLine",
    "ResolvedBatch",
    "SealKeyEntry",
    "ServiceEntry",
    "ServiceType",
    "SourcePosition",
    "is_billable",
    "SpendWindow",
    "Tier",
    "TrafficType",
    "UnauthReason",
    "UsageWindow",
    "VaultEntry",
    "VaultStatus",
    "WireError",
    "WireModel",
    "decode",
    "encode",
]
