"""Ingest's round producer on librdkafka (meterstream/producer_rdkafka.py, docs/producer.md)
against the real broker: keyed
messages land on the partition of Java's/aiokafka's default partitioner; a message the broker
refuses for good comes back as Refused while the rest of its round is on the topic in order;
a round that cannot reach a broker is retried and ``stop`` ends it promptly, without ever
blocking the event loop."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry, Counter, Histogram

from meterstream import producer_rdkafka as producer_mod
from meterstream.dev.names import unique
from meterstream.kafka import read_records_to_end
from meterstream.kafka_clients import client_kwargs
from meterstream.producer import Message, Stopped
from meterstream.producer_rdkafka import LibrdkafkaRoundProducer as RoundProducer
from meterstream.settings import KafkaSettings, Settings

pytestmark = pytest.mark.services

Record = tuple[int, bytes | None, bytes | None]  # partition, key, value


def metrics() -> tuple[Histogram, Counter]:
    registry = CollectorRegistry()
    name = unique("p").replace("-", "_").replace(".", "_")
    return (Histogram(f"{name}_latency", "round latency", registry=registry),
            Counter(f"{name}_failures", "rounds resent", registry=registry))


def round_producer(settings: Settings) -> tuple[RoundProducer, Counter]:
    latency, failures = metrics()
    return RoundProducer(settings, "test", latency, failures), failures


async def read_all(settings: Settings, topic: str) -> list[Record]:
    """Every message of ``topic``, partition by partition in offset order."""
    records = await read_records_to_end(settings, topic, timeout_s=60)
    return [(p, k, v) for p, _, k, v in sorted(records, key=lambda r: (r[0], r[1]))]


async def set_topic_config(kafka: KafkaSettings, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


def highwater_read(records: list[Record], partition: int) -> list[int]:
    """What an exactly-once reader (meter/highwater.py) takes of one partition: each value is
    a sequence number, and one at or below the highest taken is a repeat, dropped."""
    taken: list[int] = []
    for p, _, value in records:
        if p == partition and value is not None:
            n = int(value.split(b":")[0])
            if not taken or n > taken[-1]:
                taken.append(n)
    return taken


@pytest.fixture
async def ticker() -> AsyncIterator[Callable[[], float]]:
    """The longest the event loop went without running a 5 ms ticker."""
    longest = [0.0]

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            longest[0] = max(longest[0], now - last)
            last = now

    task = asyncio.ensure_future(tick())
    yield lambda: longest[0]
    task.cancel()


async def test_keyed_messages_take_the_partition_of_javas_default_partitioner(
        settings_for: Callable[..., Settings], new_topic: Callable[..., Awaitable[str]]) -> None:
    settings = settings_for()
    topic = await new_topic("murmur", partitions=7)
    rng = random.Random(7)
    keys = [b"", b"0", b"customer:1", "ünïcødé".encode()]
    keys += [rng.randbytes(rng.randint(1, 64)) for _ in range(3000)]
    keys += [f"{c}:{s}:{w}".encode() for c in range(50) for s in range(5) for w in range(4)]
    messages = [Message(topic, key, str(i).encode()) for i, key in enumerate(keys)]
    messages += [Message(topic, b"pinned", b"pinned-%d" % p, partition=p) for p in range(7)]
    producer, _ = round_producer(settings)
    try:
        assert await producer.send_round(messages) == []
    finally:
        await producer.stop()
    records = await read_all(settings, topic)
    assert len(records) == len(messages)
    partitioner, partitions = DefaultPartitioner(), list(range(7))
    for p, key, value in records:
        assert key is not None and value is not None
        if value.startswith(b"pinned-"):
            assert p == int(value[len(b"pinned-"):])  # Message.partition is honoured
        else:
            assert p == partitioner(key, partitions, partitions), key
    assert len({p for p, _, _ in records}) == 7


async def test_a_refused_message_comes_back_and_the_rest_of_its_round_is_written_in_order(
        settings_for: Callable[..., Settings], new_topic: Callable[..., Awaitable[str]]) -> None:
    """Two partitions, the topic takes 10,000 bytes a batch (less than the client's 50,000, so
    the broker refuses whole batches of innocent messages too, on both partitions): a
    20,000-byte message in the middle of partition 0's messages is refused by the broker, one
    of 60,000 bytes by produce() itself (batch_bytes 50,000); every other message is written,
    and an exactly-once reader takes each of them in order."""
    settings = settings_for(produce={"batch_bytes": 50_000, "linger_ms": 20})
    topic = await new_topic("refused", partitions=2)
    await set_topic_config(settings.kafka, topic, {"max.message.bytes": "10000"})
    messages: list[Message] = []
    for i in range(1, 601):
        size = 20_000 if i == 300 else 60_000 if i == 450 else 100
        messages.append(Message(topic, b"k", b"%d:" % i + b"x" * size, partition=i % 2))
    producer, failures = round_producer(settings)
    try:
        refused = await producer.send_round(messages)
        assert [id(r.message) for r in refused] == [id(messages[299]), id(messages[449])]
        assert "MSG_SIZE_TOO_LARGE" in refused[0].error and "MSG_SIZE_TOO_LARGE" in refused[1].error
        assert failures._value.get() == 0 and producer.refused_at is not None  # not a failed round
        # the next round goes on as usual
        assert await producer.send_round([Message(topic, b"k", b"%d:after" % i, partition=i % 2)
                                          for i in range(601, 611)]) == []
    finally:
        await producer.stop()
    records = await read_all(settings, topic)
    for partition in (0, 1):
        expected = [i for i in range(1, 611) if i % 2 == partition and i not in (300, 450)]
        assert highwater_read(records, partition) == expected
    assert not any(r[2] is not None and r[2].startswith((b"300:", b"450:")) for r in records)


async def test_a_full_queue_is_waited_on_never_dropped(settings_for: Callable[..., Settings],
                                                       new_topic: Callable[..., Awaitable[str]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    original = producer_mod.producer_config

    def small_queue(*args: object) -> object:
        config = original(*args)  # type: ignore[arg-type]
        config["queue.buffering.max.messages"] = 50
        return config

    monkeypatch.setattr(producer_mod, "producer_config", small_queue)
    settings = settings_for()
    topic = await new_topic("queue", partitions=3)
    messages = [Message(topic, b"%d" % (i % 17), b"%d:v" % i) for i in range(1, 3001)]
    producer, _ = round_producer(settings)
    try:
        assert await producer.send_round(messages) == []
    finally:
        await producer.stop()
    records = await read_all(settings, topic)
    assert sorted(int(v.split(b":")[0]) for _, _, v in records if v) == list(range(1, 3001))
    for partition in range(3):
        taken = highwater_read(records, partition)
        assert taken == sorted(taken)


async def test_concurrent_rounds_are_each_acknowledged_in_order(settings_for: Callable[..., Settings],
                                                               new_topic: Callable[..., Awaitable[str]]) -> None:
    settings = settings_for()
    topic = await new_topic("concurrent", partitions=2)
    producer, _ = round_producer(settings)
    rounds = [[Message(topic, b"r%d" % r, b"%d:r" % (r * 1000 + i)) for i in range(1, 501)] for r in range(4)]
    try:
        assert await asyncio.gather(*(producer.send_round(r) for r in rounds)) == [[], [], [], []]
    finally:
        await producer.stop()
    records = await read_all(settings, topic)
    assert len(records) == 2000
    for r in range(4):
        values = [int(v.split(b":")[0]) for _, k, v in records if k == b"r%d" % r and v]
        assert values == [r * 1000 + i for i in range(1, 501)]


async def test_timestamps_and_tombstones_are_written_as_given(settings_for: Callable[..., Settings],
                                                             new_topic: Callable[..., Awaitable[str]]) -> None:
    settings = settings_for()
    topic = await new_topic("timestamps", partitions=1)
    producer, _ = round_producer(settings)
    try:
        assert await producer.send_round([Message(topic, b"a", b"1", timestamp_ms=1_700_000_000_123),
                                          Message(topic, b"b", None, timestamp_ms=1_700_000_000_456),
                                          Message(topic, b"c", b"3")]) == []
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, **client_kwargs(settings.kafka), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                got += [(m.key, m.value, m.timestamp) for m in messages]
    finally:
        await consumer.stop()
    assert got[:2] == [(b"a", b"1", 1_700_000_000_123), (b"b", None, 1_700_000_000_456)]
    assert got[2][:2] == (b"c", b"3") and abs(got[2][2] - time.time() * 1000) < 60_000  # now


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens there once closed


async def test_an_unreachable_broker_is_retried_and_stop_ends_the_round_promptly(
        settings_for: Callable[..., Settings], ticker: Callable[[], float]) -> None:
    port = closed_port()
    settings = settings_for(kafka={"bootstrap": f"127.0.0.1:{port}"},
                            produce={"send_timeout_s": 1.0, "retry_backoff_max_s": 0.3})
    producer, failures = round_producer(settings)
    round_ = asyncio.ensure_future(producer.send_round([Message("nowhere", b"k", b"v%d" % i) for i in range(5000)]))
    deadline = time.monotonic() + 20
    while failures._value.get() < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert failures._value.get() >= 3 and not round_.done()  # resent, again and again
    assert producer.failure.since is not None  # the FailureClock runs
    # stop in the middle of an attempt (a flush slice), not only in a backoff
    while "main" not in producer._clients:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await producer.stop()
    with pytest.raises(Stopped):
        await asyncio.wait_for(round_, 2)
    assert time.monotonic() - started < 1.0
    assert ticker() < 0.2  # the loop never waited on librdkafka
