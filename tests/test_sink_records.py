"""The sink's consumer takes aiokafka's records as fetched (no ConsumerRecord each); any other
consumer in the same process still gets ConsumerRecords (real Kafka)."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from meterstream.kafka_clients import client_kwargs
from meterstream.settings import Settings
from meterstream.sinks import postgres_sink

pytestmark = pytest.mark.services


async def _read(settings: Settings, topic: str, n: int, **kwargs: object) -> list:
    consumer = AIOKafkaConsumer(topic, **client_kwargs(settings.kafka), auto_offset_reset="earliest",
                                enable_auto_commit=False, **kwargs)
    await consumer.start()
    try:
        got: list = []
        while len(got) < n:
            for records in (await consumer.getmany(timeout_ms=10_000)).values():
                got.extend(records)
        return got
    finally:
        await consumer.stop()


async def test_only_the_sinks_consumer_takes_records_as_fetched(ms_topics: Settings) -> None:
    topic = ms_topics.topic("haproxy.logs")
    producer = AIOKafkaProducer(**client_kwargs(ms_topics.kafka), acks="all")
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, value, key=b"k", partition=0, timestamp_ms=1_700_000_000_000 + i,
                                             headers=[("h", b"1")])
                for i, value in enumerate([b"one", None, b"three"])]
    finally:
        await producer.stop()
    postgres_sink._records_as_fetched()
    postgres_sink._records_as_fetched()  # once is enough; again changes nothing

    raw = await _read(ms_topics, topic, 3, value_deserializer=postgres_sink._raw)
    assert [(r.offset, r.value, r.timestamp) for r in raw] == [
        (m.offset, v, 1_700_000_000_000 + i) for i, (m, v) in enumerate(zip(sent, [b"one", None, b"three"],
                                                                            strict=True))]
    assert not any(isinstance(r, ConsumerRecord) for r in raw)

    other = await _read(ms_topics, topic, 3)
    assert all(isinstance(r, ConsumerRecord) for r in other)
    assert [(r.topic, r.partition, r.offset, r.key, r.value, r.headers) for r in other] == [
        (topic, 0, m.offset, b"k", v, (("h", b"1"),)) for m, v in zip(sent, [b"one", None, b"three"], strict=True)]
