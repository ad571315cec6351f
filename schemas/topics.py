"""The Kafka topics (SPEC §5): logical name, value model, and how a key is formed.

Names here are logical; ``Settings.topic(name)`` adds the configured prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
from meterstream.schemas.limits import LimitEvent
from meterstream.schemas.records import LogRecord, RejectedLine, ResolvedRecord
from meterstream.schemas.usage import UsageWindow
from meterstream.schemas.vault import VaultEntry
from meterstream.schemas.wire import WireModel

HAPROXY_LOGS = "haproxy.logs"
HAPROXY_LOGS_REJECTED = "haproxy.logs.rejected"
METER_APIKEYS = "meter.apikeys"
METER_INSTANCES = "meter.instances"
METER_CUSTOMERS = "meter.customers"
METER_RESOLVED = "meter.resolved"
METER_USAGE = "meter.usage"
METER_BREACHES = "meter.breaches"
VAULT_UPDATES = "vault.updates"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    value: type[WireModel]
    key: str  # what the key holds, for docs and `meterstream topics`
    compacted: bool = False


TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec(HAPROXY_LOGS, LogRecord, "api_key_fp"),
        TopicSpec(HAPROXY_LOGS_REJECTED, RejectedLine, "source"),
        TopicSpec(METER_APIKEYS, ApiKeyState, "api_key_fp", compacted=True),
        TopicSpec(METER_INSTANCES, InstanceState, "customer_id:service_type", compacted=True),
        TopicSpec(METER_CUSTOMERS, CustomerState, "customer_id", compacted=True),
        TopicSpec(METER_RESOLVED, ResolvedRecord, "customer_id"),
        TopicSpec(METER_USAGE, UsageWindow, "customer_id:service_type:network:window_start"),
        TopicSpec(METER_BREACHES, LimitEvent, "customer_id"),
        TopicSpec(VAULT_UPDATES, VaultEntry, "customer_id", compacted=True),
    )
}


def key_of(value: WireModel) -> bytes:
    """The Kafka key of a topic value, as SPEC §5 defines it for its topic."""
    match value:
        case ResolvedRecord():
            return str(value.customer_id).encode()
        case LogRecord():
            # records without a key share one key, so they keep their file order
            return b"-" if value.api_key_fp is None else str(value.api_key_fp).encode()
        case RejectedLine():
            return value.source.encode()
        case ApiKeyState():
            return str(value.api_key_fp).encode()
        case InstanceState():
            return f"{value.customer_id}:{int(value.service_type)}".encode()
        case CustomerState() | LimitEvent() | VaultEntry():
            return str(value.customer_id).encode()
        case UsageWindow():
            return (
                f"{value.customer_id}:{int(value.service_type)}:"
                f"{int(value.network)}:{value.window_start}"
            ).encode()
    raise TypeError(f"no topic carries {type(value).__name__}")
