"""`meterstream sink-postgres` and poison values: each is dead-lettered to haproxy.logs.rejected
with its topic and position, the sink goes on, and the offsets still move exactly once
(real Kafka, real Postgres, the real process)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from meterstream.dev.processes import Process
from meterstream.kafka import read_to_end
from meterstream.kafka_clients import client_kwargs
from meterstream.schemas import LimitEvent, LimitKind, UsageWindow
from meterstream.schemas.enums import Network, ServiceType
from meterstream.schemas.topics import key_of
from meterstream.schemas.types import INT64_MAX
from meterstream.schemas.wire import encode
from meterstream.settings import Settings
from tests.test_sink_postgres import consumed, record, sink

pytestmark = pytest.mark.services


def poisoned(i: int, **fields: object) -> bytes:
    """Record ``i`` with fields replaced, as JSON (stdlib json: integers of any size)."""
    value = orjson.loads(encode(record(i)))
    value.update(fields)
    return json.dumps(value).encode()


async def send(settings: Settings, messages: Sequence[tuple[str, bytes | None, bytes | None]]) -> list[tuple[int, int]]:
    """(topic, key, value) in order, each acknowledged; returns their (partition, offset)."""
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        out = []
        for topic, key, value in messages:
            meta = await producer.send_and_wait(settings.topic(topic), value, key=key)
            out.append((meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


async def dead_letters(settings: Settings) -> list[dict]:
    return [orjson.loads(v) for _, v in await read_to_end(settings, settings.topic("haproxy.logs.rejected"))
            if v is not None]


async def caught_up(pg: asyncpg.Connection, total: int, proc: Process) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while await consumed(pg) < total:
        assert proc.running(), "the sink stopped"
        assert asyncio.get_running_loop().time() < deadline, "the sink did not catch up"
        await asyncio.sleep(0.2)
    assert await consumed(pg) == total


async def test_poison_values_are_dead_lettered_and_the_sink_goes_on(
    ms_topics: Settings, pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    # minutes and hours are UTC ones even when the database's zone is not a whole hour off UTC
    await pg.execute("DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone TO %L', current_database(), "
                     "'Asia/Kolkata'); END $$")
    logs = "haproxy.logs"
    good = [(logs, key_of(record(i)), encode(record(i))) for i in range(300)]
    poison = [
        (logs, b"p", poisoned(1000, ts=99999999999999999)),  # OverflowError building the row, once
        (logs, b"p", poisoned(1001, TR=3000000000)),  # int32 overflow in COPY
        (logs, b"p", poisoned(1002, bytes_sent=2**63)),  # int64
        (logs, b"p", poisoned(1003, bytes_sent=2**64 + 5)),  # beyond what JSON readers hold
        (logs, b"p", poisoned(1004, request_id="r-\x00-nul")),  # Postgres TEXT refuses NUL
        (logs, b"p", None),  # a tombstone on a topic that has none
        (logs, b"p", b"\xff\xfe not even UTF-8"),
    ]
    hour = 1_795_600_800_000 - 1_795_600_800_000 % 3_600_000
    # each minute within BIGINT, their hour beyond it: the roll-up saturates
    windows = [UsageWindow(customer_id=42, service_type=ServiceType.SEAL, network=network,
                           window_start=hour + minute * 60_000, revision=1, requests=INT64_MAX, bytes_sent=INT64_MAX)
               for minute in range(3) for network in (Network.MAINNET, Network.TESTNET)]
    event = LimitEvent(event_id="42:-:spend_warning:w", customer_id=42, kind=LimitKind.SPEND_WARNING,
                       observed=INT64_MAX, limit=-INT64_MAX, window="x:" + "9" * 98, at=hour)
    usage = [("meter.usage", key_of(w), encode(w)) for w in windows]
    usage.append(("meter.breaches", key_of(event), encode(event)))
    bad_usage = [("meter.usage", b"u", orjson.dumps({**orjson.loads(encode(windows[0])), "requests": 2**63}))]
    positions = await send(ms_topics, good[:150] + poison + good[150:] + usage + bad_usage)
    total = len(positions)
    proc = sink(ms_topics, pg_dsn, tmp_path).start()
    try:
        await caught_up(pg, total, proc)
        assert await pg.fetchval("SELECT count(*) FROM haproxy_raw_logs") == 300
        letters = await dead_letters(ms_topics)
        assert len(letters) == len(poison) + len(bad_usage)
        topic = ms_topics.topic(logs)
        expected = {(f"{topic}:{p}", o) for p, o in positions[150:150 + len(poison)]}
        usage_topic = ms_topics.topic("meter.usage")
        expected.add((f"{usage_topic}:{positions[-1][0]}", positions[-1][1]))
        assert {(d["position"]["stream"], d["position"]["offset"]) for d in letters} == expected
        by_offset = {d["position"]["offset"]: d for d in letters if d["source"] == topic}
        first = positions[150][1]
        assert by_offset[first]["reason"] == "invalid_record" and "LogRecord.ts" in by_offset[first]["detail"]
        assert orjson.loads(by_offset[first]["raw"])["ts"] == 99999999999999999  # the value, as it came
        assert "LogRecord.TR" in by_offset[first + 1]["detail"]
        assert "LogRecord.bytes_sent" in by_offset[first + 2]["detail"]
        assert "LogRecord.request_id" in by_offset[first + 4]["detail"]
        assert by_offset[first + 5]["reason"] == "null_value" and by_offset[first + 5]["raw"] == ""
        assert by_offset[first + 6]["raw_encoding"] == "base64"
        assert base64.b64decode(by_offset[first + 6]["raw"]) == poison[6][2]
        assert {d["source"] for d in letters} == {topic, usage_topic}
        assert proc.metric("meterstream_sink_dead_letters_total", f'reason="invalid_record",topic="{topic}"') == 6
        assert proc.metric("meterstream_sink_dead_letters_total", f'reason="null_value",topic="{topic}"') == 1
        # the hour saturates; its window is the UTC hour
        hours = await pg.fetch("SELECT extract(epoch FROM window_start)::bigint * 1000 AS h, requests, bytes_sent, "
                               "billable_requests FROM usage_records")
        assert [tuple(h) for h in hours] == [(hour, INT64_MAX, INT64_MAX, 0)]
        assert await pg.fetchval("SELECT count(*) FROM usage_minutes") == 6
        assert await pg.fetchval("SELECT observed FROM limit_events") == INT64_MAX

        # live traffic after the poison still lands
        more = [(logs, key_of(record(i)), encode(record(i))) for i in range(300, 400)]
        total += len(await send(ms_topics, more + [(logs, b"p", poisoned(1005, Ta=-2))]))
        await caught_up(pg, total, proc)
        assert await pg.fetchval("SELECT count(*) FROM haproxy_raw_logs") == 400
        assert len(await dead_letters(ms_topics)) == len(letters) + 1
    finally:
        assert proc.terminate() == 0
    # the offsets moved once: a restart reads nothing again, dead-letters nothing again
    proc.start()
    try:
        await asyncio.sleep(4)
        assert proc.running() and await consumed(pg) == total
        assert len(await dead_letters(ms_topics)) == len(letters) + 1
    finally:
        assert proc.terminate() == 0


async def test_rows_the_table_refuses_are_isolated_and_dead_lettered(
    ms_topics: Settings, pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    # a table stricter than its wire model (a drift between schemas/ and the database)
    await pg.execute("ALTER TABLE haproxy_raw_logs ADD CONSTRAINT test_no_teapots CHECK (status_code <> 418)")
    teapots = {137, 555, 556}
    values = [encode(record(i).model_copy(update={"status": 418 if i in teapots else 200})) for i in range(1_500)]
    positions = await send(ms_topics, [("haproxy.logs", b"k", v) for v in values])
    proc = sink(ms_topics, pg_dsn, tmp_path).start()  # batches of 700
    try:
        await caught_up(pg, len(values), proc)
        assert await pg.fetchval("SELECT count(*) FROM haproxy_raw_logs") == 1_500 - len(teapots)
        assert await pg.fetchval("SELECT count(*) FROM haproxy_raw_logs WHERE status_code = 418") == 0
        letters = await dead_letters(ms_topics)
        assert sorted(d["position"]["offset"] for d in letters) == sorted(positions[i][1] for i in teapots)
        assert all(d["reason"] == "refused_by_postgres" and "test_no_teapots" in d["detail"] for d in letters)
        assert {orjson.loads(d["raw"])["request_id"] for d in letters} == {record(i).request_id for i in teapots}
        assert proc.metric("meterstream_sink_isolations_total") >= 1
        assert proc.metric("meterstream_sink_rows_total", 'table="haproxy_raw_logs"') == 1_500 - len(teapots)
    finally:
        assert proc.terminate() == 0
