"""Every decode path of the sink, the vault and sync-config, fed arbitrary JSON and arbitrary
bytes: each returns its value or raises its own module's rejection (Refused, UnknownKey,
WireError), never anything else. And every value the sink's wire models accept goes into its
table (real Postgres): the models and the columns agree."""

from __future__ import annotations

import ipaddress
import json
from types import ModuleType

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterstream.meter.config_sync import customer_state, instance_state, key_state
from meterstream.schemas.enums import VALID_EVENT_TYPES, LimitKind, Tier
from meterstream.schemas.notifications import config_change, vault_change
from meterstream.schemas.tiers import effective_limits
from meterstream.schemas.types import EPOCH_MS_MAX, EPOCH_MS_MIN, INT32_MAX, INT32_MIN, INT64_MAX, JSON_SAFE_MAX
from meterstream.schemas.wire import WireError, encode
from meterstream.sinks import limit_events, pgvalues, raw_logs, usage
from meterstream.sinks.decode import Refused, dead_letter, row_of
from meterstream.sinks.vault_state import seal_key_entry, service_entry
from meterstream.sinks.vault_updates import UnknownKey, customer_of, held
from tests.examples import EXAMPLES

HANDLERS = {"haproxy.logs": raw_logs, "meter.usage": usage, "meter.breaches": limit_events}
EXAMPLE_OF = {raw_logs: "LogRecord", usage: "UsageWindow", limit_events: "LimitEvent"}
SETTINGS = settings(max_examples=250, deadline=None)

# -- arbitrary JSON ---------------------------------------------------------------------------
EDGE_INTS = st.sampled_from([
    -1, 0, 1, 2.0, 1.5, -(2**31) - 1, -(2**31), 2**31 - 1, 2**31, 3_000_000_000, 2**53 - 1, 2**53, 2**63 - 1, 2**63,
    2**64, 2**64 + 5, -(2**63), -(2**63) - 1, 10**30, 99_999_999_999_999_999, EPOCH_MS_MIN - 1, EPOCH_MS_MAX + 1])
SCALARS = (st.none() | st.booleans() | st.integers() | EDGE_INTS | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=300) | st.sampled_from(["", "\x00", "a\x00b", "-1", "1e400", "𝄞" * 70, "::1%eth0"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                         max_size=4), max_leaves=12)


@st.composite
def near_miss(draw: st.DrawFn, example: dict) -> dict:
    """A valid value with one to three fields replaced by arbitrary JSON, removed, or added."""
    value = dict(example)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*sorted(value), "unknown"]))
        if key in value and draw(st.integers(0, 4)) == 0:
            del value[key]
        elif key == "src" and draw(st.booleans()):
            value[key] = draw(near_miss(example["src"]))
        else:
            value[key] = draw(JSON)
    return value


def as_bytes(value: object) -> bytes:
    return json.dumps(value).encode()  # the stdlib writes integers of any size


def payloads(example: dict) -> st.SearchStrategy[bytes | None]:
    return (near_miss(example).map(as_bytes) | JSON.map(as_bytes) | st.binary(max_size=300) | st.none()
            | st.sampled_from([b"", b"{", b"[" * 5000, b'{"v": 1}', b'"\\ud800"', b"1e400", b"\xff\xfe"]))


# -- the sink ---------------------------------------------------------------------------------
@pytest.mark.parametrize("topic", sorted(HANDLERS))
@given(data=st.data())
@SETTINGS
def test_sink_rows_or_refused(topic: str, data: st.DataObject) -> None:
    handler = HANDLERS[topic]
    payload = data.draw(payloads(orjson.loads(encode(EXAMPLES[EXAMPLE_OF[handler]]))))
    try:
        row = row_of(handler, payload)
    except Refused as refused:
        letter = dead_letter(topic, 3, 2**62, payload, refused, keep=300)  # its dead letter is always buildable
        assert letter.reason == refused.reason and letter.position.stream == f"{topic}:3"
        encode(letter)
        return
    assert isinstance(row, tuple) and len(row) == len(handler.COLUMNS)


# Values the models accept, drawn from their whole range (hypothesis favours the bounds).
TEXT = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


def text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(TEXT, min_size=min_size, max_size=max_size)


def ints(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


LOG_RECORDS = st.fixed_dictionaries({
    "ts": ints(EPOCH_MS_MIN, EPOCH_MS_MAX), "request_id": text(128, 1),
    "client_ip": text(64) | st.ip_addresses().map(str), "src": st.fixed_dictionaries(
        {"stream": text(256, 1), "offset": ints(0, INT64_MAX)}),
    "status": ints(-1, 999), "bytes_sent": ints(0, JSON_SAFE_MAX),
}, optional={
    "api_key_fp": st.none() | ints(INT32_MIN, INT32_MAX).filter(bool), "service_type": st.none() | ints(1, 3),
    "network": st.none() | ints(0, 3), "server_id": st.none() | ints(0, 32767), "fe_type": st.none() | ints(1, 3),
    "traffic_type": ints(0, 6), "event_type": st.sampled_from(sorted(VALID_EVENT_TYPES)),
    "key_metadata": st.none() | text(64), "path": text(10), "TR": ints(-1, INT32_MAX), "Tw": ints(-1, INT32_MAX),
    "Tc": ints(-1, INT32_MAX), "Tr": ints(-1, INT32_MAX), "Ta": ints(-1, INT32_MAX),
    "backend_id": st.none() | ints(0, INT32_MAX), "termination_state": text(4),
    "config_hex": st.none() | st.from_regex(r"[0-9a-fA-F]{0,64}", fullmatch=True),
})


@st.composite
def usage_windows(draw: st.DrawFn) -> dict:
    requests = draw(ints(0, INT64_MAX))
    parts = {name: draw(ints(0, requests)) for name in ("billable", "denied", "client_errors", "server_errors")}
    return {"customer_id": draw(ints(0, INT32_MAX)), "service_type": draw(ints(1, 3)), "network": draw(ints(0, 3)),
            "window_start": draw(ints(EPOCH_MS_MIN // 60_000 + 1, EPOCH_MS_MAX // 60_000)) * 60_000,
            "revision": draw(ints(1, INT64_MAX)), "final": draw(st.booleans()), "requests": requests,
            "bytes_sent": draw(ints(0, INT64_MAX)), "ta_sum_ms": draw(ints(0, INT64_MAX)), **parts}


LIMIT_EVENTS = st.fixed_dictionaries({
    "event_id": text(200, 1), "customer_id": ints(0, INT32_MAX), "kind": st.sampled_from([k.value for k in LimitKind]),
    "observed": ints(-INT64_MAX, INT64_MAX), "limit": ints(-INT64_MAX, INT64_MAX), "window": text(100, 1),
    "at": ints(EPOCH_MS_MIN, EPOCH_MS_MAX),
}, optional={"service_type": st.none() | ints(1, 3), "api_key_fp": st.none() | ints(INT32_MIN, INT32_MAX).filter(bool),
             "region_id": st.none() | ints(0, 2047)})
VALID = {raw_logs: LOG_RECORDS, usage: usage_windows(), limit_events: LIMIT_EVENTS}


@pytest.fixture
async def staged(pg: asyncpg.Connection) -> asyncpg.Connection:
    for handler in VALID:
        await pg.execute(f"CREATE TEMP TABLE IF NOT EXISTS {handler.STAGING} "
                         f"(LIKE {handler.TABLE} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    await pg.execute("SET TIME ZONE 'UTC'")
    await pgvalues.prepare(pg)  # the sink's rows carry timestamps and addresses as it sends them
    return pg


def _packed(address: str | None) -> bytes | None:
    if address is None:
        return None
    try:
        return ipaddress.ip_address(address).packed
    except ValueError:
        return None


class _Rollback(Exception):
    pass


@pytest.mark.services
@pytest.mark.parametrize("topic", sorted(HANDLERS))
@given(data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_every_value_the_model_accepts_goes_into_its_table(staged: asyncpg.Connection, topic: str,
                                                                  data: st.DataObject) -> None:
    handler: ModuleType = HANDLERS[topic]
    values = [as_bytes(data.draw(VALID[handler])) for _ in range(data.draw(st.integers(1, 3)))]
    rows = [row_of(handler, value) for value in values]
    try:
        async with staged.transaction():
            assert await handler.write(staged, rows) >= 1
            # what Postgres stored is the model's time and address (read as Postgres shows them)
            if handler is raw_logs:
                stored = {r["request_id"]: (r["ms"], r["ip"]) for r in await staged.fetch(
                    "SELECT request_id, (extract(epoch FROM ts) * 1000)::bigint AS ms, host(client_ip) AS ip "
                    "FROM haproxy_raw_logs")}
                expected: dict[str, tuple] = {}
                for value in values:
                    r = handler.MODEL.model_validate_json(value)
                    expected.setdefault(r.request_id, (r.ts, _packed(r.client_ip)))
                assert {k: (ms, ip and _packed(ip)) for k, (ms, ip) in stored.items()} == expected
            elif handler is limit_events:
                stored = {r["event_id"]: r["ms"] for r in await staged.fetch(
                    "SELECT event_id, (extract(epoch FROM at) * 1000)::bigint AS ms FROM limit_events")}
                expected = {}
                for value in values:
                    e = handler.MODEL.model_validate_json(value)
                    expected.setdefault(e.event_id, e.at)
                assert stored == expected
            raise _Rollback
    except _Rollback:
        pass


# -- the vault ---------------------------------------------------------------------------------
KEYS = st.none() | st.binary(max_size=12) | st.integers(-(2**40), 2**40).map(lambda i: str(i).encode()) \
    | st.sampled_from([b"0", b"007", b"2147483647", b"2147483648", b" 1", b"1\n", "١٢".encode()])


@given(records=st.lists(st.tuples(ints(0, 9), ints(0, INT64_MAX), KEYS, st.none() | st.binary(max_size=20)),
                        max_size=30))
@SETTINGS
def test_vault_updates_reader_never_raises(records: list) -> None:
    found = held(records)
    for customer in found.published:
        assert 0 < customer <= INT32_MAX
    assert all(f.value is not None for f in found.foreign)
    for _, _, key, _ in records:
        try:
            assert str(customer_of(key)).encode() == key  # only canonical keys name a customer
        except UnknownKey:
            pass


CONFIGS = (st.dictionaries(st.sampled_from(["guaranteed_rps", "burst_rps", "note"]), JSON, max_size=3).map(json.dumps)
           | JSON.map(json.dumps) | st.text(max_size=50)
           | st.sampled_from(['{"guaranteed_rps": 1e400}', '{"guaranteed_rps": 2.0}', '{"burst_rps": -0}']))


@given(service=ints(-(2**15), 2**15 - 1), tier=st.sampled_from(["starter", "pro", "enterprise"]) | st.text(max_size=12),
       enabled=st.booleans(), config=CONFIGS, seal_id=text(120), packages=st.none() | st.lists(text(120), max_size=3))
@SETTINGS
def test_vault_rows_or_wire_error(service: int, tier: str, enabled: bool, config: str, seal_id: str,
                                  packages: list | None) -> None:
    try:
        name, entry = service_entry({"service_type": service, "tier": tier, "enabled": enabled, "config": config})
        assert name in ("seal", "grpc", "graphql") and 0 <= entry.guaranteed_rps <= INT32_MAX
    except WireError:
        pass
    try:
        seal_key_entry({"seal_key_id": seal_id, "packages": packages})
    except WireError:
        pass


# -- sync-config -------------------------------------------------------------------------------
@given(payload=st.text(max_size=300) | JSON.map(json.dumps)
       | st.sampled_from(['{"table":"x"}', '{"table":"customers"}', '{"table":"api_keys","api_key_fp":0}'])
       | st.fixed_dictionaries({"table": st.sampled_from(["api_keys", "service_instances", "customers"])},
                               optional={"api_key_fp": JSON, "customer_id": JSON, "service_type": JSON})
       .map(json.dumps))
@SETTINGS
def test_notification_payloads_or_wire_error(payload: str) -> None:
    try:
        change = config_change(payload)
        assert change.table in ("api_keys", "service_instances", "customers")
    except WireError:
        pass
    try:
        vault_change(payload)
    except WireError:
        pass


BIGINT = ints(-(2**63), 2**63 - 1)


@given(customer=ints(INT32_MIN, INT32_MAX), service=ints(-(2**15), 2**15 - 1), tier=st.text(max_size=12)
       | st.sampled_from(["starter", "pro", "enterprise"]), enabled=st.booleans(), config=CONFIGS,
       fp=ints(INT32_MIN, INT32_MAX), digest=st.text(max_size=64).map(lambda s: s.ljust(64)),
       status=st.text(max_size=10) | st.sampled_from(["active", "revoked", "suspended", "closed"]),
       window=st.text(max_size=15) | st.sampled_from(["rolling_30d", "calendar_month"]),
       cap=BIGINT, balance=BIGINT, committed=BIGINT)
@SETTINGS
def test_config_rows_or_wire_error(customer: int, service: int, tier: str, enabled: bool, config: str, fp: int,
                                   digest: str, status: str, window: str, cap: int, balance: int,
                                   committed: int) -> None:
    rows = [
        (instance_state, {"customer_id": customer, "service_type": service, "tier": tier, "enabled": enabled,
                          "config": config}),
        (key_state, {"api_key_fp": fp, "api_key_hash": digest, "customer_id": customer, "service_type": service,
                     "status": status}),
        (customer_state, {"customer_id": customer, "status": status, "spend_cap_cents": cap, "spend_window": window,
                          "balance_cents": balance, "committed_charges_cents": committed}),
    ]
    for build, row in rows:
        try:
            value = build(row)
            assert value is None or isinstance(value, bytes)
        except WireError:
            pass
    for one in Tier:
        try:
            limits = effective_limits(one, config)
            assert 0 <= limits.guaranteed_rps <= INT32_MAX
        except WireError:
            pass
