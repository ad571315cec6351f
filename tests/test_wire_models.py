"""Wire models (schemas/): round trips, and invalid payloads fail naming the field."""

from __future__ import annotations

import orjson
import pytest

from meterstream.schemas import (
    CustomerState,
    LimitEvent,
    LogRecord,
    RejectedLine,
    ResolvedBatch,
    UsageWindow,
    WireError,
    decode,
    encode,
)
from meterstream.schemas.enums import EventClass, ServiceType, TrafficType, UnauthReason
from meterstream.schemas.topics import TOPICS, key_of
from tests.examples import EXAMPLES, LOG


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_round_trip_is_identity(name: str) -> None:
    value = EXAMPLES[name]
    assert decode(type(value), encode(value)) == value


def test_every_topic_has_an_example() -> None:
    assert {spec.value.__name__ for spec in TOPICS.values()} == set(EXAMPLES)


def test_enums_travel_as_codes_and_names() -> None:
    payload = orjson.loads(encode(EXAMPLES["InstanceState"]))
    assert payload["service_type"] == 2 and payload["tier"] == "enterprise" and payload["v"] == 1
    assert orjson.loads(encode(LOG))["traffic_type"] == 1


def _with(model_name: str, **changes: object) -> bytes:
    data = orjson.loads(encode(EXAMPLES[model_name]))
    for path, value in changes.items():
        target = data
        *parents, leaf = path.split("__")
        for part in parents:
            target = target[part]
        if value is _DELETE:
            del target[leaf]
        else:
            target[leaf] = value
    return orjson.dumps(data)


_DELETE = object()


@pytest.mark.parametrize(
    ("model", "changes", "field"),
    [
        ("LogRecord", {"status": "two hundred"}, "status"),
        ("LogRecord", {"api_key_fp": 0}, "api_key_fp"),
        ("LogRecord", {"api_key_fp": 2**31}, "api_key_fp"),
        ("LogRecord", {"service_type": 9}, "service_type"),
        ("LogRecord", {"event_type": 42}, "event_type"),
        ("LogRecord", {"Ta": -2}, "Ta"),
        ("LogRecord", {"path": "x" * 11}, "path"),
        ("LogRecord", {"request_id": _DELETE}, "request_id"),
        ("LogRecord", {"src__offset": -1}, "src.offset"),
        ("LogRecord", {"surprise": 1}, "surprise"),
        ("LogRecord", {"v": 3}, "v"),
        # every field within what the tables and the aggregates hold (poison values)
        ("LogRecord", {"ts": 99_999_999_999_999_999}, "ts"),
        ("LogRecord", {"ts": 0}, "ts"),
        ("LogRecord", {"TR": 3_000_000_000}, "TR"),
        ("LogRecord", {"bytes_sent": 2**63}, "bytes_sent"),
        ("LogRecord", {"bytes_sent": 2**53}, "bytes_sent"),
        ("LogRecord", {"backend_id": 2**31}, "backend_id"),
        ("LogRecord", {"request_id": "a\u0000b"}, "request_id"),
        ("LogRecord", {"client_ip": "\u0000"}, "client_ip"),
        ("LogRecord", {"src__stream": "f\u0000"}, "src.stream"),
        ("LogRecord", {"src__offset": 2**63}, "src.offset"),
        ("ResolvedBatch", {"partition": -1}, "partition"),
        ("UsageWindow", {"bytes_sent": 2**63}, "bytes_sent"),
        ("LimitEvent", {"observed": 2**63}, "observed"),
        ("LimitEvent", {"at": 10**17}, "at"),
        ("ApiKeyState", {"api_key_hash": "ABC"}, "api_key_hash"),
        ("ApiKeyState", {"customer_id": 0}, "customer_id"),
        ("ApiKeyState", {"customer_id": "7d1f1e5e-0000-4000-8000-000000000000"}, "customer_id"),
        ("CustomerState", {"spend_cap_micros": 100.5}, "spend_cap_micros"),
        ("CustomerState", {"balance_micros": 2.0}, "balance_micros"),
        ("CustomerState", {"status": "frozen"}, "status"),
        ("UsageWindow", {"window_start": 1_764_072_000_001}, "window_start"),
        ("UsageWindow", {"requests": 1.0}, "requests"),
        ("LimitEvent", {"kind": "spend_panic"}, "kind"),
        ("VaultEntry", {"services__seal__tier": "gold"}, "services.seal.tier"),
        ("VaultEntry", {"status": "banned"}, "status"),
        ("RejectedLine", {"reason": "Not A Code"}, "reason"),
    ],
)
def test_invalid_payload_names_the_field(model: str, changes: dict, field: str) -> None:
    with pytest.raises(WireError) as info:
        decode(type(EXAMPLES[model]), _with(model, **changes))
    assert info.value.field == field
    assert str(info.value).startswith(f"{model}.{field}: ")


def test_not_json_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="LogRecord: not JSON"):
        decode(LogRecord, b"\xff{")


def test_model_level_rules() -> None:
    with pytest.raises(WireError, match="billable cannot exceed requests"):
        decode(UsageWindow, _with("UsageWindow", billable=11))
    bad = orjson.loads(encode(EXAMPLES["ResolvedBatch"]))
    bad["records"][0]["unauth"] = None
    with pytest.raises(WireError, match="customer_id is 0 exactly when unauth"):
        decode(ResolvedBatch, orjson.dumps(bad))
    with pytest.raises(WireError, match="spend_cap_micros must be within"):
        decode(CustomerState, _with("CustomerState", spend_cap_micros=50_000_010_000))
    with pytest.raises(WireError, match="enterprise instance names its guaranteed_rps"):
        decode(type(EXAMPLES["InstanceState"]), _with("InstanceState", guaranteed_rps=None))


def test_billable_rule() -> None:
    def rec(traffic: TrafficType, status: int) -> LogRecord:
        return LOG.model_copy(update={"traffic_type": traffic, "status": status})

    assert rec(TrafficType.GUARANTEED, 200).is_billable
    assert rec(TrafficType.BURST, 399).is_billable
    assert not rec(TrafficType.BURST, 400).is_billable
    assert not rec(TrafficType.GUARANTEED, 199).is_billable
    assert not rec(TrafficType.DENIED, 200).is_billable
    assert not rec(TrafficType.NA, 200).is_billable
    assert [t for t in TrafficType if t.is_denied] == [3, 4, 5, 6]


def test_event_classes_cover_spec_codes() -> None:
    assert EventClass.of(0) is EventClass.SUCCESS
    assert {EventClass.of(c) for c in range(10, 17)} == {EventClass.AUTH_FAILURE}
    assert EventClass.of(21) is EventClass.IP_BLOCK
    assert EventClass.of(30) is EventClass.AUTHORIZATION
    assert EventClass.of(63) is EventClass.BACKEND_ERROR
    for code in (1, 17, 22, 31, 49, 64):
        with pytest.raises(ValueError):
            EventClass.of(code)


def test_keys_follow_docs_wire() -> None:
    # haproxy.logs: the customer HAProxy named, else the fingerprint, else customer 0
    assert key_of(LOG.model_copy(update={"customer_id": 184467441})) == b"184467441"
    assert LOG.api_key_fp is not None and key_of(LOG) == b"fp%d" % LOG.api_key_fp
    assert key_of(LOG.model_copy(update={"api_key_fp": None})) == b"0"
    for refused in range(10, 17):  # HAProxy refused the key: unauthenticated, whatever it named
        assert key_of(LOG.model_copy(update={"event_type": refused, "customer_id": 184467441})) == b"0"
    assert key_of(EXAMPLES["ResolvedBatch"]) == b"3"
    assert key_of(EXAMPLES["InstanceState"]) == b"184467441:2"
    assert key_of(EXAMPLES["UsageWindow"]) == b"184467441:1:0:1764072000000"
    assert key_of(EXAMPLES["RejectedLine"]) == b"/var/log/haproxy.log"
    assert isinstance(EXAMPLES["LimitEvent"], LimitEvent)
    assert key_of(EXAMPLES["LimitEvent"]) == b"184467441"


def test_service_key_prefixes() -> None:
    assert [s.key_prefix for s in ServiceType] == ["S", "R", "G"]
    assert ServiceType.from_key_prefix("G") is ServiceType.GRAPHQL
    with pytest.raises(ValueError):
        ServiceType.from_key_prefix("X")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fast_encode_is_model_dump(name: str) -> None:
    value = EXAMPLES[name]
    assert encode(value) == orjson.dumps(value.model_dump(mode="json"))


def test_encoded_values_hold_no_spare_buffer() -> None:
    """A round keeps ~20,000 encoded values: each must cost about its length, not orjson's
    write buffer (~8 KiB), or a round holds 160 MiB instead of 13 MiB."""
    import tracemalloc

    tracemalloc.start()
    try:
        values = [encode(LOG) for _ in range(1000)]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held / len(values) < 2 * len(values[0]) + 200


def test_usage_counts_are_the_models_counters() -> None:
    from meterstream.schemas.usage import COUNTS

    counters = [n for n, f in UsageWindow.model_fields.items() if n not in
                ("v", "customer_id", "service_type", "network", "window_start", "revision", "final")]
    assert list(COUNTS) == counters


def test_a_dead_letter_is_built_from_any_input() -> None:
    """NULs and long texts never make the dead letter itself invalid."""
    line = RejectedLine.of(b"a\x00b", source="s\x00" + "x" * 5000, position=None, reason="invalid_record",
                           detail="d\x00" * 1000, keep=8192)
    assert line.raw_encoding == "base64" and line.raw == "YQBi"
    assert "\x00" not in line.source + line.detail and len(line.source) <= 1024
    assert decode(RejectedLine, encode(line)) == line


def test_log_record_v1_is_still_read() -> None:
    """v2 added HAProxy's customer hint; values written before it still decode."""
    old = orjson.loads(encode(LOG))
    old["v"] = 1
    del old["customer_id"]
    assert decode(LogRecord, orjson.dumps(old)) == LOG
    assert orjson.loads(encode(LOG))["v"] == 2


def test_packed_resolved_records_decode_with_their_model() -> None:
    """meter.resolved values built by pack() are ResolvedBatch values, in order, each within
    the bound; no records still carries the source partition's progress."""
    from meterstream.schemas.resolved import pack, unpack

    records = [(7 if i % 3 else 0, None if i % 3 else UnauthReason.UNKNOWN_KEY, 1000 + i,
                LOG.model_copy(update={"request_id": f"r{i}", "customer_id": 7 if i % 2 else None}))
               for i in range(300)]
    messages = pack(2, 1_764_072_000_500, records, max_bytes=16_384)
    assert len(messages) > 1 and all(len(m) <= 16_384 for m in messages)
    batches = [unpack(m) for m in messages]
    assert all(b.partition == 2 and b.progress == 1_764_072_000_500 for b in batches)
    got = [(f.customer_id, f.unauth, f.offset, f.record) for b in batches for f in b.records]
    assert got == records
    (empty,) = pack(1, None, [], max_bytes=16_384)
    assert unpack(empty) == ResolvedBatch(partition=1, progress=None, records=[])
    with pytest.raises(ValueError, match="does not fit"):
        pack(1, None, records[:1], max_bytes=200)


def test_a_window_row_writes_what_its_model_encodes() -> None:
    """The meter emits WindowRow values (no model per window); their bytes are the model's."""
    from meterstream.schemas.usage import COUNTS, WindowRow

    w = EXAMPLES["UsageWindow"]
    row = WindowRow(w.customer_id, int(w.service_type), int(w.network), w.window_start, w.revision, w.final,
                    tuple(getattr(w, n) for n in COUNTS))
    assert row.value() == encode(w) and row.model() == w
    assert decode(UsageWindow, row.value()) == w
    assert list(WindowRow._fields[:-1]) + list(COUNTS) == [n for n in UsageWindow.model_fields if n != "v"]
