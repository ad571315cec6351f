"""Kafka clients (aiokafka) and the topics of SPEC §5, created with their configuration."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from meterstream.schemas.topics import TOPICS
from meterstream.settings import Settings


def admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap,
        client_id=settings.kafka.client_id,
        request_timeout_ms=int(settings.kafka.request_timeout_s * 1000),
    )


async def ensure_topics(settings: Settings, partitions: int = 4) -> list[str]:
    """Create the topics of SPEC §5 that do not exist yet; returns the names created."""
    client = admin(settings)
    await client.start()
    try:
        existing = set(await client.list_topics())
        wanted = [
            NewTopic(
                name=settings.topic(spec.name),
                num_partitions=partitions,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"} if spec.compacted else {},
            )
            for spec in TOPICS.values()
            if settings.topic(spec.name) not in existing
        ]
        if wanted:
            try:
                await client.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process
        return [t.name for t in wanted]
    finally:
        await client.close()
