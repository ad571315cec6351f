"""Kafka clients (aiokafka) and the topics of docs/wire.md, created with their configuration."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from meterstream.kafka_clients import client_kwargs
from meterstream.schemas.topics import TOPICS
from meterstream.settings import Settings


def admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        **client_kwargs(settings.kafka),
        client_id=settings.kafka.client_id,
        request_timeout_ms=int(settings.kafka.request_timeout_s * 1000),
    )


async def ensure_topics(settings: Settings, partitions: int = 4) -> list[str]:
    """Create the topics of docs/wire.md that do not exist yet; returns the names created."""
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
            await _until_led(client, [t.name for t in wanted], settings.kafka.request_timeout_s)
        return [t.name for t in wanted]
    finally:
        await client.close()


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    client = admin(settings)
    await client.start()
    try:
        (described,) = await client.describe_topics([topic])
    finally:
        await client.close()
    if described["error_code"] != 0 or not described["partitions"]:
        raise ValueError(f"no topic {topic} (error code {described['error_code']})")
    return sorted(p["partition"] for p in described["partitions"])


async def _until_led(client: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    """Return once every partition of the new topics has a leader: producing right after
    creation otherwise meets NotLeaderForPartition while the controller elects them."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = await client.describe_topics(names)
        if all(t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
               for t in described):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"topics without leaders after {timeout_s}s: {names}")


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """partition -> the offset after its last message."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in await partitions_of(settings, topic)])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def read_to_end(settings: Settings, topic: str, timeout_s: float = 30.0,
                      since_ms: int | None = None) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of ``topic`` up to its end offsets at the call: from the beginning,
    or from the first message written at or after ``since_ms`` (broker time); a tombstone's
    value is None."""
    return [(key, value) for _, _, key, value in await read_records_to_end(settings, topic, timeout_s, since_ms)]


async def read_records_to_end(settings: Settings, topic: str, timeout_s: float = 30.0,
                              since_ms: int | None = None) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """As ``read_to_end``, with each message's position: (partition, offset, key, value)."""
    import asyncio
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False,
                                client_id=f"{settings.kafka.client_id}-reader")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await partitions_of(settings, topic)]
        consumer.assign(partitions)
        if since_ms is None:
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
        else:  # (seeking to the beginning must come before end_offsets: found by the tests)
            ends = await consumer.end_offsets(partitions)
            found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
            for tp in partitions:
                consumer.seek(tp, ends[tp] if found.get(tp) is None else found[tp].offset)
        out: list[tuple[int, int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + timeout_s
        async def behind() -> bool:
            for tp, end in ends.items():
                if await consumer.position(tp) < end:
                    return True
            return False

        while await behind():
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
            batch = await consumer.getmany(*partitions, timeout_ms=500)
            for tp, messages in batch.items():
                out += [(tp.partition, m.offset, m.key, m.value) for m in messages if m.offset < ends[tp]]
            await asyncio.sleep(0)
        return out
    finally:
        await consumer.stop()


async def delete_topics_with_prefix(settings: Settings) -> list[str]:
    """Deletes every topic whose name starts with the settings' topic prefix (a test's or a
    benchmark's own, and the changelogs its worker created, so that they do not fill a shared
    broker); returns them. A prefix is required: an empty one would name every topic."""
    prefix = settings.kafka.topic_prefix
    if not prefix:
        raise ValueError("no topic prefix: refusing to delete every topic")
    client = admin(settings)
    await client.start()
    try:
        names = [t for t in await client.list_topics() if t.startswith(prefix)]
        if names:
            await client.delete_topics(names)
        return names
    finally:
        await client.close()
