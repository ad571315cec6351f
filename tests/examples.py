"""One valid instance of every wire model, shared by the unit and the Kafka round-trip tests."""

from __future__ import annotations

from typing import Any

from meterstream.schemas import (
    ApiKeyState,
    CustomerState,
    InstanceState,
    LimitEvent,
    LimitKind,
    LogRecord,
    RejectedLine,
    SealKeyEntry,
    ServiceEntry,
    ServiceType,
    SpendWindow,
    Tier,
    TrafficType,
    UnauthReason,
    UsageWindow,
    VaultEntry,
    VaultStatus,
)
from meterstream.schemas.enums import FeType, Network
from meterstream.schemas.limits import event_id
from meterstream.schemas.records import SourcePosition
from meterstream.schemas.resolved import Forwarded, ResolvedBatch

HASH = "3f" * 32
SRC = SourcePosition(stream="edge-1:2049:131077:9f86d081", offset=4096)

LOG = LogRecord(
    ts=1_764_072_000_123, request_id="0A1B2C3D:01F2_0A000001:01BB_6745A1B2_0001:1F2E",
    client_ip="203.0.113.7", api_key_fp=-1_234_567, service_type=ServiceType.SEAL,
    network=Network.MAINNET, server_id=(3 << 4) | 2, fe_type=FeType.METERED,
    traffic_type=TrafficType.GUARANTEED, event_type=0, key_metadata="01", status=200,
    bytes_sent=1532, path="v1/fetch_k", TR=0, Tw=0, Tc=1, Tr=12, Ta=14, backend_id=3,
    termination_state="----", config_hex="0a1f", src=SRC,
)

EXAMPLES: dict[str, Any] = {
    "LogRecord": LOG,
    "RejectedLine": RejectedLine(
        source="/var/log/haproxy.log", position=SRC, reason="not_json", detail="line 1 col 3",
        raw="{oops", raw_bytes=5, at=1_764_072_001_000,
    ),
    "ApiKeyState": ApiKeyState(api_key_fp=0x3F3F3F3F, api_key_hash=HASH, customer_id=184467441,
                               service_type=ServiceType.SEAL),
    "InstanceState": InstanceState(customer_id=184467441, service_type=ServiceType.GRPC,
                                   tier=Tier.ENTERPRISE, guaranteed_rps=5000, burst_rps=8000),
    "CustomerState": CustomerState(customer_id=184467441, spend_window=SpendWindow.CALENDAR_MONTH,
                                   spend_cap_micros=100_000_000, balance_micros=25_000_000,
                                   committed_charges_micros=1_250_000),
    "ResolvedBatch": ResolvedBatch(partition=3, progress=1_764_072_000_123, records=[
        Forwarded(customer_id=0, unauth=UnauthReason.UNKNOWN_KEY, offset=99, record=LOG),
        Forwarded(customer_id=184467441, offset=100, record=LOG.model_copy(update={"customer_id": 7}))]),
    "UsageWindow": UsageWindow(customer_id=184467441, service_type=ServiceType.SEAL,
                               network=Network.TESTNET, window_start=1_764_072_000_000,
                               revision=3, requests=10, billable=8, bytes_sent=12_000, denied=1,
                               client_errors=1, server_errors=0, ta_sum_ms=140),
    "LimitEvent": LimitEvent(
        event_id=event_id(184467441, LimitKind.SPEND_WARNING, "rolling_30d:1"),
        customer_id=184467441, kind=LimitKind.SPEND_WARNING, observed=160_000_000_000,
        limit=200_000_000_000, window="rolling_30d:1", at=1_764_072_000_123,
    ),
    "VaultEntry": VaultEntry(
        customer_id=184467441, api_keys=[HASH],
        services={"seal": ServiceEntry(tier=Tier.PRO, guaranteed_rps=1000, burst_rps=2000)},
        seal_keys=[SealKeyEntry(id="0xacme01", package_ids=["0xpkg0a"])],
        status=VaultStatus.THROTTLED,
    ),
}


def configure(view, *states) -> None:  # noqa: ANN001 - a worker's ConfigView, then config wire models
    """Applies configuration states to a worker's view as the compacted topics carry them."""
    from meterstream.schemas import topics as names
    from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
    from meterstream.schemas.topics import key_of
    from meterstream.schemas.wire import encode

    topic = {ApiKeyState: names.METER_APIKEYS, InstanceState: names.METER_INSTANCES,
             CustomerState: names.METER_CUSTOMERS}
    for state in states:
        view.apply(topic[type(state)], key_of(state), encode(state))
