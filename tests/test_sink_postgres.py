"""`meterstream sink-postgres`: haproxy.logs -> haproxy_raw_logs exactly once (real Kafka, Postgres)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from meterstream.dev.processes import Process, wait_for
from meterstream.kafka_clients import client_kwargs
from meterstream.schemas import LimitEvent, LimitKind, UsageWindow
from meterstream.schemas.enums import Network, ServiceType
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import encode
from meterstream.settings import Settings
from tests.examples import LOG
from tests.helpers import own_services_or_skip

pytestmark = pytest.mark.services


def record(i: int):  # noqa: ANN201
    return LOG.model_copy(update={"request_id": f"r-{i:08d}", "api_key_fp": (i % 50) + 1,
                                  "ts": LOG.ts + i, "src": LOG.src.model_copy(update={"offset": i * 100})})


async def produce(settings: Settings, ids: list[int], extra: Sequence[bytes] = (),
                  values: Sequence[Any] = ()) -> int:
    """Sends records ``ids`` to haproxy.logs, ``extra`` raw junk there, and ``values`` (usage
    windows, limit events) to their topics."""
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        topic = settings.topic("haproxy.logs")
        futures = [await producer.send(topic, encode(record(i)), key=key_of(record(i))) for i in ids]
        futures += [await producer.send(topic, raw, key=b"junk") for raw in extra]
        for value in values:
            name = "meter.usage" if isinstance(value, UsageWindow) else "meter.breaches"
            futures.append(await producer.send(settings.topic(name), encode(value), key=key_of(value)))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)


def sink(settings: Settings, dsn: str, tmp_path: Path) -> Process:
    return Process(["sink-postgres"], {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
                                       "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
                                       "MS_POSTGRES__DSN": dsn, "MS_SINK__BATCH_ROWS": "700"},
                   tmp_path / "sink.log")


async def _until_failed(proc: Process) -> None:
    while proc.metric("meterstream_sink_postgres_failures_total") < 1:
        await asyncio.sleep(0.2)


async def consumed(pg: asyncpg.Connection) -> int:
    return await pg.fetchval("SELECT coalesce(sum(next_offset), 0) FROM sink_offsets") or 0


async def test_rows_duplicates_and_bad_messages(
    ms_topics: Settings, pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    ids = list(range(2_000)) + list(range(0, 2_000, 10))  # 200 repeated records
    total = await produce(ms_topics, ids, extra=[b"not json", b'{"v": 1}'])
    proc = sink(ms_topics, pg_dsn, tmp_path).start()
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while await consumed(pg) < total:
            assert asyncio.get_running_loop().time() < deadline, "the sink did not catch up"
            await asyncio.sleep(0.2)
        assert await pg.fetchval("SELECT count(*) FROM haproxy_raw_logs") == 2_000
        row = await pg.fetchrow("SELECT * FROM haproxy_raw_logs WHERE request_id = 'r-00000007'")
        r = record(7)
        assert row["ts"] == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=r.ts)
        assert (str(row["client_ip"]), row["api_key_fp"], row["service_type"], row["network"]) == (
            r.client_ip, r.api_key_fp, 1, 1)
        assert (row["status_code"], row["bytes_sent"], row["path_prefix"], row["time_total_ms"]) == (
            r.status, r.bytes_sent, r.path, r.Ta)
        assert (row["source_stream"], row["source_offset"], row["termination_state"]) == (
            r.src.stream, 700, "----")
        assert proc.metric("meterstream_sink_duplicates_total", 'table="haproxy_raw_logs"') == 200
        assert proc.metric("meterstream_sink_undecodable_total", f'topic="{ms_topics.topic("haproxy.logs")}"') == 2
        topic = ms_topics.topic("haproxy.logs")
        for partition in ("0", "1"):  # caught up: no lag (refreshed once a second)
            labels = f'partition="{partition}",topic="{topic}"'
            wait_for(lambda: proc.metric("meterstream_sink_lag_messages", labels, default=-1) == 0,  # noqa: B023
                     5, "lag 0")  # (wait_for calls it before the loop moves on)
    finally:
        assert proc.terminate() == 0


@pytest.mark.slow
async def test_exactly_once_through_kill_9_and_a_postgres_restart(
    ms_topics: Settings, pg_dsn: str, tmp_path: Path
) -> None:
    cluster = own_services_or_skip("restarts Postgres").postgres
    pg = await asyncpg.connect(pg_dsn)  # its own: the restart below breaks every connection
    rng = random.Random(5)
    truth: set[int] = set()
    hour = 1_795_600_800_000 - 1_795_600_800_000 % 3_600_000

    def windows(step: int) -> list[UsageWindow]:  # each step supersedes the last; a stale one follows
        def w(minute: int, revision: int) -> UsageWindow:
            return UsageWindow(customer_id=42, service_type=ServiceType.SEAL, network=Network.MAINNET,
                               window_start=hour + minute * 60_000, revision=revision,
                               requests=revision * 10 + minute, billable=revision * 5, bytes_sent=revision * 100)
        return [w(m, step + 1) for m in range(10)] + ([w(m, step) for m in range(0, 10, 3)] if step else [])

    def events(step: int) -> list[LimitEvent]:
        fresh = [LimitEvent(event_id=f"42:-:spend_warning:s{step}:{i}", customer_id=42, kind=LimitKind.SPEND_WARNING,
                            observed=80, limit=80, window=f"s{step}:{i}", at=hour) for i in range(20)]
        return fresh + fresh[:5]  # repeats

    sent = 0
    proc = sink(ms_topics, pg_dsn, tmp_path).start()
    for step in range(8):
        if step == 4:  # Postgres crashes (not a clean shutdown) while records keep coming
            await pg.close()
            await asyncio.to_thread(cluster.stop, "immediate")
        ids = list(range(step * 4_000, (step + 1) * 4_000))
        ids += rng.sample(ids, 400)  # repeats within the step
        truth.update(ids)
        sent += await produce(ms_topics, ids, values=windows(step) + events(step))
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        if step in (1, 3, 6):
            proc.kill9()
            proc.start()
        if step == 4:
            try:
                # the sink meets the outage once it holds partitions again (after a kill -9 the
                # group first waits out the dead member's session)
                await asyncio.wait_for(_until_failed(proc), 60)
            finally:
                await asyncio.to_thread(cluster.start)
            pg = await asyncpg.connect(pg_dsn)
    try:
        deadline = asyncio.get_running_loop().time() + 120
        while await consumed(pg) < sent:
            assert asyncio.get_running_loop().time() < deadline, "the sink did not catch up"
            await asyncio.sleep(0.3)
        assert await consumed(pg) == sent
        got = await pg.fetch("SELECT request_id FROM haproxy_raw_logs")
        assert len(got) == len(truth)
        assert {r["request_id"] for r in got} == {f"r-{i:08d}" for i in truth}
        # usage: the last revision of every window, and the hour rolled up from them
        minutes = await pg.fetch("SELECT window_start, requests, revision FROM usage_minutes ORDER BY window_start")
        assert [(r["requests"], r["revision"]) for r in minutes] == [(80 + m, 8) for m in range(10)]
        assert await pg.fetchval("SELECT requests FROM usage_records") == sum(80 + m for m in range(10))
        # limit events: each id once
        assert await pg.fetchval("SELECT count(*) FROM limit_events") == 8 * 20
    finally:
        assert proc.terminate() == 0
        await pg.close()


async def test_usage_windows_roll_up_and_limit_events_once(
    ms_topics: Settings, pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    hour = 1_795_600_800_000  # 2026-11-25T07:20:00Z is inside; the hour starts at 07:00
    hour -= hour % 3_600_000

    def window(minute: int, revision: int, requests: int, network: Network = Network.MAINNET,
               final: bool = False) -> UsageWindow:
        return UsageWindow(customer_id=42, service_type=ServiceType.SEAL, network=network,
                           window_start=hour + minute * 60_000, revision=revision, final=final,
                           requests=requests, billable=requests // 2, bytes_sent=requests * 10)

    usage = [window(0, 1, 5), window(0, 3, 30), window(0, 2, 20),  # rev 2 arrives late: ignored
             window(0, 3, 30, final=True),  # same totals, now final
             window(59, 1, 7), window(59, 1, 4, network=Network.TESTNET), window(60, 1, 100)]
    events = [LimitEvent(event_id=f"42:-:spend_warning:rolling_30d:{n}", customer_id=42,
                         kind=LimitKind.SPEND_WARNING, observed=80, limit=80, window="rolling_30d:1",
                         at=hour) for n in (1, 1, 2)]
    producer = AIOKafkaProducer(**client_kwargs(ms_topics.kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for topic, values in (("meter.usage", usage), ("meter.breaches", events)):
            for value in values:  # one key per window/customer: in order on one partition
                await producer.send_and_wait(ms_topics.topic(topic), encode(value), key=key_of(value))
    finally:
        await producer.stop()
    proc = sink(ms_topics, pg_dsn, tmp_path).start()
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while await consumed(pg) < len(usage) + len(events):
            assert asyncio.get_running_loop().time() < deadline, "the sink did not catch up"
            await asyncio.sleep(0.2)
    finally:
        assert proc.terminate() == 0
    minutes = await pg.fetch("SELECT network, extract(epoch FROM window_start)::bigint * 1000 AS start, "
                             "revision, final, requests FROM usage_minutes ORDER BY start, network")
    assert [tuple(m) for m in minutes] == [
        (1, hour, 3, True, 30), (0, hour + 59 * 60_000, 1, False, 4), (1, hour + 59 * 60_000, 1, False, 7),
        (1, hour + 3_600_000, 1, False, 100)]
    hours = await pg.fetch("SELECT extract(epoch FROM window_start)::bigint * 1000 AS h, requests, "
                           "billable_requests, bytes_sent FROM usage_records ORDER BY h")
    assert [tuple(h) for h in hours] == [(hour, 41, 15 + 2 + 3, 410), (hour + 3_600_000, 100, 50, 1000)]
    assert [r["event_id"] for r in await pg.fetch("SELECT event_id FROM limit_events ORDER BY event_id")] == [
        "42:-:spend_warning:rolling_30d:1", "42:-:spend_warning:rolling_30d:2"]
