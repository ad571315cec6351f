"""`meterstream worker` against hostile input, on the real broker: poison values on every topic
it reads go to the dead letters and the worker goes on; a flood of unknown keys leaves every
count exact, every message it writes within its bound and its memory bounded; a message the
broker refuses for good does not hang it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from meterstream.dev.corpus import BASE_TS, build
from meterstream.dev.processes import Process, async_wait_for
from meterstream.kafka import read_records_to_end
from meterstream.kafka_clients import client_kwargs
from meterstream.schemas import topics
from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
from meterstream.schemas.enums import ServiceType, Tier
from meterstream.schemas.records import LogRecord, SourcePosition
from meterstream.schemas.topics import key_of
from meterstream.schemas.usage import COUNTS
from meterstream.schemas.wire import encode
from meterstream.settings import Settings
from tests.test_worker import Outputs, publish, worker

pytestmark = pytest.mark.services
MAX_BYTES = 2**53 - 1  # bytes_sent's bound


async def send(settings: Settings, messages: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), enable_idempotence=True, linger_ms=5,
                                max_batch_size=512 * 1024)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send(settings.topic(topic), value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def record(i: int, customer: int | None, fp: int | None, stream: str = "poison:1:1:f", **kw: object) -> LogRecord:
    fields: dict = {"ts": BASE_TS + 1_000 + i, "request_id": f"h{i}", "client_ip": "198.51.100.7", "api_key_fp": fp,
                    "customer_id": customer, "service_type": ServiceType.SEAL, "network": 1, "server_id": 17,
                    "traffic_type": 1, "status": 200, "bytes_sent": 100, "src": SourcePosition(stream=stream,
                                                                                              offset=i * 100)}
    return LogRecord(**{**fields, **kw})


async def test_poison_values_are_dead_lettered_and_the_worker_goes_on(ms_topics: Settings, tmp_path: Path) -> None:
    """On haproxy.logs a tombstone, non-JSON, and values out of every range; on meter.resolved
    a malformed packed batch; on meter.breaches (read back at start) a value that is no
    event. Then 1,100 records of the largest size in one window: its bytes saturate at the
    BIGINT bound instead of overflowing. Good records before and after count exactly."""
    corpus = build(bulk=500, now_ms=time.time_ns() // 1_000_000)
    owner = corpus.fps["k1001s"]
    good = corpus.encoded()
    # a customer whose rate and balance no poison can reach, for the largest requests
    big_fp = 9001 * 7919
    big_config = [CustomerState(customer_id=9001, balance_micros=10**12),
                  InstanceState(customer_id=9001, service_type=ServiceType.SEAL, tier=Tier.ENTERPRISE,
                                guaranteed_rps=1_000_000),
                  ApiKeyState(api_key_fp=big_fp, api_key_hash=f"{big_fp:064x}", customer_id=9001,
                              service_type=ServiceType.SEAL)]
    config_topic = {CustomerState: topics.METER_CUSTOMERS, InstanceState: topics.METER_INSTANCES,
                    ApiKeyState: topics.METER_APIKEYS}
    poison_logs = [None, b"not json", b'{"v":2}', b"[]",
                   orjson.dumps({**orjson.loads(encode(record(0, 1001, owner))), "ts": 99_999_999_999_999_999}),
                   orjson.dumps({**orjson.loads(encode(record(1, 1001, owner))), "TR": 3_000_000_000}),
                   encode(record(2, 1001, owner)).replace(b'"bytes_sent":100', b'"bytes_sent":18446744073709551616'),
                   orjson.dumps({**orjson.loads(encode(record(3, 1001, owner))), "request_id": "a\u0000b"})]
    await send(ms_topics, [(topics.METER_BREACHES, b"1001", b"garbage"), (topics.METER_BREACHES, b"1", None)]
               + [(config_topic[type(c)], key_of(c), encode(c)) for c in big_config])
    await publish(ms_topics, corpus, records=slice(0, len(good) // 2))
    await send(ms_topics, [(topics.HAPROXY_LOGS, b"1001", v) for v in poison_logs]
               + [(topics.METER_RESOLVED, b"0", v) for v in (b'{"v":2}', b"\x00\x01", b'{"v":2,"partition":0,'
                                                                         b'"records":[{"customer_id":0}]}')])
    big = [record(100 + i, 9001, big_fp, stream="poison:1:1:big", bytes_sent=MAX_BYTES) for i in range(1_100)]
    await send(ms_topics, [(topics.HAPROXY_LOGS, key_of(r), encode(r)) for r in big])
    await publish(ms_topics, corpus, config=False, records=slice(len(good) // 2, None))
    proc = worker(ms_topics, tmp_path).start()
    try:
        async with Outputs(ms_topics) as out:
            expected = {**corpus.usage, (9001, 1, 1, BASE_TS): {
                **dict.fromkeys(COUNTS, 0), "requests": 1_100, "billable": 1_100, "bytes_sent": 2**63 - 1}}
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and (out.totals() != expected or set(out.events) != set(corpus.events)):
                await asyncio.sleep(0.5)
            assert out.totals() == expected
            assert set(out.events) == set(corpus.events)
            invalid = out.rejected.get("invalid_record", 0)
            assert invalid == len(poison_logs) + 3, out.rejected
        assert proc.running()
        assert proc.metric("meterstream_worker_rejected_total", 'reason="invalid_record"') == len(poison_logs) + 3
        assert proc.metric("meterstream_worker_rejected_total", 'reason="invalid_limit_event"') == 1
        status, _ = proc.get("/healthz")
        assert status == 200
        assert proc.terminate() == 0
    finally:
        if proc.running():
            proc.kill9()


@pytest.mark.slow
async def test_an_unknown_key_flood_leaves_every_count_exact(ms_topics: Settings, tmp_path: Path) -> None:
    """60,000 requests in one minute from 997 sources, 90 % with distinct random keys (HAProxy
    answers 401), among real customers' traffic: every window equals its truth, customer 0's
    included; no
    message the worker writes passes its bound; fingerprints past the tracking cap are only
    counted; the worker stays within its memory."""
    rng = random.Random(11)
    config: list[tuple[str, bytes, bytes | None]] = []
    customers = list(range(5001, 5021))
    fps: dict[int, int] = {}
    for c in customers:
        state = CustomerState(customer_id=c, balance_micros=10**12)
        inst = InstanceState(customer_id=c, service_type=ServiceType.SEAL, tier=Tier.PRO)
        fp = fps[c] = c * 7919
        key = ApiKeyState(api_key_fp=fp, api_key_hash=f"{fp:064x}", customer_id=c, service_type=ServiceType.SEAL)
        config += [(topics.METER_CUSTOMERS, key_of(state), encode(state)), (topics.METER_INSTANCES, key_of(inst),
                                                                           encode(inst)),
                   (topics.METER_APIKEYS, key_of(key), encode(key))]
    records: list[LogRecord] = []
    truth: dict[tuple[int, int, int, int], dict[str, int]] = {}
    for i in range(60_000):
        real = i % 10 == 0
        customer = customers[i // 10 % len(customers)] if real else 0
        fp = fps[customer] if real else rng.randrange(1, 2**31)
        # the flood also comes from many sources (the marks of every value stay bounded)
        r = record(i, customer if real else None, fp, stream=f"flood:{i % 997}", ts=BASE_TS + i,
                   event_type=0 if real else 11, status=200 if real else 401, traffic_type=1 if real else 3)
        records.append(r)
        w = truth.setdefault((customer, 1, 1, BASE_TS), dict.fromkeys(COUNTS, 0))
        w["requests"] += 1
        w["billable"] += real
        w["bytes_sent"] += 100
        w["denied"] += not real
        w["client_errors"] += not real
    records.append(record(60_000, customers[0], fps[customers[0]], ts=BASE_TS + 70_000))  # closes the minute
    truth[(customers[0], 1, 1, BASE_TS + 60_000)] = {**dict.fromkeys(COUNTS, 0), "requests": 1, "billable": 1,
                                                     "bytes_sent": 100}
    await send(ms_topics, [(t, k, v) for t, k, v in config] + [(topics.HAPROXY_LOGS, key_of(r), encode(r))
                                                                for r in records])
    proc = Process(["worker"], {"MS_KAFKA__BOOTSTRAP": ms_topics.kafka.bootstrap,
                                "MS_KAFKA__TOPIC_PREFIX": ms_topics.kafka.topic_prefix,
                                "MS_WORKER__INVALID_KEYS_MAX": "5000"}, tmp_path / "worker.log").start()
    try:
        async with Outputs(ms_topics) as out:
            await async_wait_for(lambda: out.totals() == truth, 180, "every window equal to its truth")
        assert proc.metric("meterstream_worker_invalid_keys_untracked_total") > 0
        rss = int(next(line for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines()
                       if line.startswith("VmHWM:")).split()[1]) / 1024
        assert rss < 400, f"peak RSS {rss:.0f} MiB"
        assert proc.terminate() == 0
    finally:
        if proc.running():
            proc.kill9()
    admin = AIOKafkaAdminClient(**client_kwargs(ms_topics.kafka))
    await admin.start()
    try:
        written = [t for t in await admin.list_topics() if t.startswith(ms_topics.kafka.topic_prefix)
                   and t != ms_topics.topic(topics.HAPROXY_LOGS)]
    finally:
        await admin.close()
    largest = 0
    for name in written:
        for _, _, _, value in await read_records_to_end(ms_topics, name, timeout_s=60):
            largest = max(largest, len(value or b""))
    assert 0 < largest <= 256 * 1024


async def test_a_message_the_broker_refuses_does_not_hang_the_worker(ms_topics: Settings, tmp_path: Path) -> None:
    """meter.usage refuses every message (max.message.bytes 100): the worker dead-letters the
    windows it cannot publish, says so (metric, /healthz 503) and meters everything else."""
    admin = AIOKafkaAdminClient(**client_kwargs(ms_topics.kafka))
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, ms_topics.topic(topics.METER_USAGE),
                                                  {"max.message.bytes": "100"})])
    finally:
        await admin.close()
    corpus = build(bulk=500, now_ms=time.time_ns() // 1_000_000)
    await publish(ms_topics, corpus)
    proc = worker(ms_topics, tmp_path).start()
    try:
        async with Outputs(ms_topics) as out:
            await async_wait_for(lambda: set(out.events) == set(corpus.events), 90, "every limit event")
            await async_wait_for(lambda: out.rejected.get("unpublishable", 0) > 0, 30, "dead letters")
            assert out.usage == {}
        assert proc.metric("meterstream_worker_unpublishable_total",
                           f'topic="{ms_topics.topic(topics.METER_USAGE)}"') >= out.rejected["unpublishable"]
        assert proc.metric("meterstream_produce_refused_total",
                           f'component="worker",topic="{ms_topics.topic(topics.METER_USAGE)}"') > 0
        status, body = proc.get("/healthz")
        assert status == 503 and orjson.loads(body)["refused_s_ago"] is not None
        assert proc.running()
        assert proc.terminate() == 0
    finally:
        if proc.running():
            proc.kill9()
