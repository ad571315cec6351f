"""The Kafka topics (docs/wire.md): logical name, value model, and how a key is formed.

Names here are logical; ``Settings.topic(name)`` adds the configured prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
from meterstream.schemas.enums import EVENT_TYPE_CODES, EventClass
from meterstream.schemas.limits import LimitEvent
from meterstream.schemas.records import LogRecord, RejectedLine
from meterstream.schemas.resolved import ResolvedBatch
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
        TopicSpec(HAPROXY_LOGS, LogRecord, "customer_id (HAProxy's), else fp<api_key_fp>, else 0"),
        TopicSpec(HAPROXY_LOGS_REJECTED, RejectedLine, "source"),
        TopicSpec(METER_APIKEYS, ApiKeyState, "api_key_fp", compacted=True),
        TopicSpec(METER_INSTANCES, InstanceState, "customer_id:service_type", compacted=True),
        TopicSpec(METER_CUSTOMERS, CustomerState, "customer_id", compacted=True),
        TopicSpec(METER_RESOLVED, ResolvedBatch, "source partition (sent to the customers' partition)"),
        TopicSpec(METER_USAGE, UsageWindow, "customer_id:service_type:network:window_start"),
        TopicSpec(METER_BREACHES, LimitEvent, "customer_id"),
        TopicSpec(VAULT_UPDATES, VaultEntry, "customer_id", compacted=True),
    )
}


def key_of(value: WireModel) -> bytes:
    """The Kafka key of a topic value, as docs/wire.md defines it for its topic."""
    match value:
        case LogRecord():
            return log_key(value)
        case ResolvedBatch():
            return b"%d" % value.partition
        case RejectedLine():
            return value.source.encode()
        case ApiKeyState():
            return str(value.api_key_fp).encode()
        case InstanceState():
            return f"{value.customer_id}:{int(value.service_type)}".encode()
        case CustomerState() | LimitEvent() | VaultEntry():
            return str(value.customer_id).encode()
        case UsageWindow():
            return usage_key(value.customer_id, value.service_type, value.network, value.window_start)
    raise TypeError(f"no topic carries {type(value).__name__}")


_AUTH_REFUSED = EVENT_TYPE_CODES[EventClass.AUTH_FAILURE]


def usage_key(customer_id: int, service_type: int, network: int, window_start: int) -> bytes:
    """The key of a meter.usage value (the window it supersedes)."""
    return b"%d:%d:%d:%d" % (customer_id, service_type, network, window_start)


def customer_key(customer_id: int) -> bytes:
    """The key that places a customer's records and state: a haproxy.logs record HAProxy
    matched to the customer, and the worker's tables for it, share its partition."""
    return b"%d" % customer_id


def log_key(record: LogRecord) -> bytes:
    """The key of a haproxy.logs record: its customer as HAProxy matched it, so that the
    worker meters it in one pass on that customer's partition (docs/wire.md). Customer 0
    (unauthenticated) for a request without a key or refused for its authentication (docs/metering.md:
    HAProxy's verdict stands); ``fp<fingerprint>`` when HAProxy named no customer (a frontend
    that does not log it): the worker resolves and forwards those."""
    if record.api_key_fp is None or record.event_type in _AUTH_REFUSED:
        return customer_key(0)
    if record.customer_id is not None:
        return customer_key(record.customer_id)
    return b"fp%d" % record.api_key_fp
