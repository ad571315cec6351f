"""Every wire model crosses a real Kafka topic and comes back unchanged."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from meterstream.kafka import ensure_topics
from meterstream.kafka_clients import client_kwargs
from meterstream.schemas import decode, encode
from meterstream.schemas.topics import TOPICS, key_of
from meterstream.settings import Settings
from tests.conftest import Services
from tests.examples import EXAMPLES

pytestmark = pytest.mark.services


async def test_every_model_round_trips_through_kafka(
    services: Services, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topics = {name: await new_topic(name) for name in EXAMPLES}
    producer = AIOKafkaProducer(**client_kwargs(services.kafka), acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        for name, value in EXAMPLES.items():
            await producer.send_and_wait(topics[name], encode(value), key=key_of(value))
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(*topics.values(), **client_kwargs(services.kafka),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    received: dict[Any, Any] = {}
    try:
        by_topic = {t: n for n, t in topics.items()}
        while len(received) < len(EXAMPLES):
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"timed out; got only {sorted(received)}"
            for tp, messages in batch.items():
                for m in messages:
                    received[by_topic[tp.topic]] = (m.key, m.value)
    finally:
        await consumer.stop()

    for name, value in EXAMPLES.items():
        key, payload = received[name]
        assert key == key_of(value)
        assert decode(type(value), payload) == value


async def test_ensure_topics_creates_spec_topics_with_compaction(
    services: Services, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for(kafka={**services.kafka.model_dump(),
                                   "topic_prefix": f"t{uuid.uuid4().hex[:8]}."})
    created = await ensure_topics(settings, partitions=2)
    assert sorted(created) == sorted(settings.topic(n) for n in TOPICS)
    leaders = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
    await leaders.start()
    try:  # usable at once: every partition already has a leader when ensure_topics returns
        described = await leaders.describe_topics(created)
        assert all(p["leader"] >= 0 for t in described for p in t["partitions"])
    finally:
        await leaders.close()
    assert await ensure_topics(settings, partitions=2) == []
    admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
    await admin.start()
    try:
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topic(n)) for n in TOPICS])
        policies = {}
        for response in described:
            for _err, _msg, _type, name, entries in response.resources:
                policies[name] = {e[0]: e[1] for e in entries}["cleanup.policy"]
        for spec in TOPICS.values():
            expected = "compact" if spec.compacted else "delete"
            assert policies[settings.topic(spec.name)] == expected, spec.name
    finally:
        await admin.delete_topics(created)
        await admin.close()
