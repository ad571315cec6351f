"""Kafka for the tests, the benchmarks and the demo: topics of their own (unique names,
deleted afterwards), reading a topic until it is quiet, and waiting until a consumer group has
caught up. See docs/dev-services.md."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError

from meterstream.dev.names import unique
from meterstream.kafka import end_offsets
from meterstream.kafka_clients import client_kwargs
from meterstream.settings import KafkaSettings, Settings


async def create_topics(kafka: KafkaSettings, names: Iterable[str], partitions: int = 1,
                        configs: dict[str, str] | None = None) -> list[str]:
    names = list(names)
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1, topic_configs=configs or {}) for n in names])
    finally:
        await admin.close()
    return names


async def delete_topics(kafka: KafkaSettings, names: Iterable[str]) -> None:
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    try:
        await admin.delete_topics(list(names))
    finally:
        await admin.close()


class NewTopics:
    """Creates topics with unique names on one admin client; ``close`` deletes them."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.admin = AIOKafkaAdminClient(**client_kwargs(kafka))
        self.created: list[str] = []

    async def start(self) -> NewTopics:
        await self.admin.start()
        return self

    async def make(self, prefix: str = "t", partitions: int = 1, compacted: bool = False) -> str:
        name = unique(prefix.replace(".", "_"))
        configs = {"cleanup.policy": "compact"} if compacted else {}
        await self.admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
        self.created.append(name)
        return name

    async def close(self) -> None:
        if self.created:
            await self.admin.delete_topics(self.created)
        await self.admin.close()


async def consume(kafka: KafkaSettings, topic: str, *, expect: int | None = None, quiet_s: float = 3.0,
                  timeout_s: float = 120.0, until: Callable[[list], bool] | None = None) -> list:
    """Every message of ``topic`` (decoded JSON values with keys), read until ``expect``
    messages arrived (or ``until`` holds) and then ``quiet_s`` without more."""
    consumer = AIOKafkaConsumer(topic, **client_kwargs(kafka), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + timeout_s
        last_growth = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for m in messages:
                    out.append((m.key, orjson.loads(m.value)))
                last_growth = time.monotonic()
            done = (expect is not None and len(out) >= expect) or (until is not None and until(out))
            if (done or (expect is None and until is None)) and time.monotonic() - last_growth >= quiet_s:
                break
    finally:
        await consumer.stop()
    return out


async def committed_offsets(kafka: KafkaSettings, group: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the offset ``group`` has committed; empty before its first commit."""
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    try:
        return {(tp.topic, tp.partition): meta.offset
                for tp, meta in (await admin.list_consumer_group_offsets(group)).items()}
    except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
        return {}  # a new broker creates its offsets topic with the first group
    finally:
        await admin.close()


async def group_lag(settings: Settings, group: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> records of these topics (full names) ``group`` has not committed."""
    committed = await committed_offsets(settings.kafka, group)
    lag = {}
    for topic in topics:
        for partition, end in (await end_offsets(settings, topic)).items():
            lag[(topic, partition)] = max(end - committed.get((topic, partition), 0), 0)
    return lag


async def wait_caught_up(settings: Settings, group: str, topics: Iterable[str], timeout_s: float,
                         check: Callable[[], None] | None = None, what: str | None = None) -> float:
    """Waits until ``group`` has committed the end of each of these topics (full names); returns
    the seconds it took. ``check`` runs each round and may raise (a process that exited)."""
    topics = list(topics)
    started = time.monotonic()
    while True:
        if check is not None:
            check()
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what or group} did not catch up within {timeout_s:.0f} s")
        if not any((await group_lag(settings, group, topics)).values()):
            return time.monotonic() - started
        await asyncio.sleep(0.5)
